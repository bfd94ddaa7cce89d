"""Interventions at hook points: exact with no edit (the error term), edits change exactly the
chosen positions and features, padding is left alone, several hooks at once, hooks removed also
on an exception, and the one-line errors."""

import pytest
import torch

from saescope.errors import ConfigError, InputError
from saescope.saes import make_sae
from saescope.steer import AddVector, Edit, FeatureEdits, decoder_direction, steering
from tests.steer.common import random_topk

TEXT = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of "
    "having nothing to do: once or twice she had peeped into the book her sister was reading"
)


@pytest.fixture(scope="module")
def sae():
    return random_topk(128, 512, 16, seed=1, spread=0.3)


@pytest.fixture
def ids(glass):
    _, tok = glass
    return torch.tensor([tok.encode(TEXT)[:24]])


def _logits(model, ids, ivs=(), **kw):
    with torch.no_grad(), steering(model, list(ivs), **kw):
        return model(ids)


def _residual(model, ids, hook, ivs=()):
    """The residual stream after block `hook` as the next block reads it (after steering)."""
    seen = {}
    after = f"layers.{int(hook.split('.')[1]) + 1}"
    pre = dict(model.named_modules())[after].register_forward_pre_hook
    h = pre(lambda m, a: seen.update(x=a[0]))
    try:
        _logits(model, ids, ivs)
    finally:
        h.remove()
    return seen["x"]


def test_no_edit_is_exact_and_zeroing_a_silent_feature_changes_nothing(glass, sae, ids):
    model, _ = glass
    clean = _logits(model, ids)
    keep = FeatureEdits("layers.1", sae=sae, edits=[Edit(i, 1.0, mode="scale") for i in range(512)])
    assert (_logits(model, ids, [keep]) - clean).abs().max() <= 1e-5
    f = sae.encode(_residual(model, ids, "layers.1")[0])
    silent = int((f.sum(0) == 0).nonzero()[0])
    edit = FeatureEdits("layers.1", sae=sae, edits=[Edit(silent, mode="zero")])
    assert (_logits(model, ids, [edit]) - clean).abs().max() <= 1e-5


def test_set_clamps_the_feature_and_keeps_the_error_term(glass, sae, ids):
    model, _ = glass
    x = _residual(model, ids, "layers.1")[0]
    edit = FeatureEdits("layers.1", sae=sae, edits=[Edit(7, 5.0)])
    x2 = _residual(model, ids, "layers.1", [edit])[0]
    f = sae.encode(x)
    # x' = decode(f') + error: the change is (5 - f_7) times feature 7's decoder row
    change = x2 - x
    d7 = decoder_direction(sae, 7)
    assert torch.allclose(change[1:], ((5.0 - f[1:, 7])[:, None] * d7), atol=1e-5)
    assert torch.equal(change[0], torch.zeros(128))  # position 0 is kept


def test_positions_last_a_slice_and_a_list(glass, sae, ids):
    model, _ = glass
    x = _residual(model, ids, "layers.2")[0]
    for positions, want in [
        ("last", [23]),
        (slice(3, 6), [3, 4, 5]),
        ([2, -1], [2, 23]),
        ("all", list(range(1, 24))),
    ]:
        edit = AddVector("layers.2", positions, vector=torch.ones(128), alpha=0.5)
        x2 = _residual(model, ids, "layers.2", [edit])[0]
        changed = (x2 - x).abs().sum(1).nonzero().flatten().tolist()
        assert changed == want, positions


def test_padding_is_never_changed_and_padded_rows_equal_unpadded(glass, sae, ids):
    model, _ = glass
    edit = FeatureEdits("layers.1", sae=sae, edits=[Edit(3, 4.0), Edit(9, 2.0, mode="add")])
    short = ids[:, :16]
    padded = torch.cat((short, torch.zeros(1, 8, dtype=torch.long)), 1)
    batch = torch.cat((ids, padded))
    mask = torch.ones_like(batch)
    mask[1, 16:] = 0
    with torch.no_grad(), steering(model, [edit], attention_mask=mask):
        both = model(batch)
    alone = _logits(model, short, [edit])
    assert (both[1, :16] - alone[0]).abs().max() <= 1e-5
    assert (both[0] - _logits(model, ids, [edit])[0]).abs().max() <= 1e-5
    # "last" follows the mask: each row's last real token
    last = AddVector("layers.1", "last", vector=torch.ones(128))
    x = _residual(model, batch, "layers.1")
    with steering(model, [last], attention_mask=mask):
        x2 = _residual(model, batch, "layers.1")
    changed = [(x2[r] - x[r]).abs().sum(1).nonzero().flatten().tolist() for r in range(2)]
    assert changed == [[23], [15]]


def test_several_hooks_at_once_and_hooks_removed_after_an_exception(glass, sae, ids):
    model, _ = glass
    clean = _logits(model, ids)
    ivs = [
        FeatureEdits("layers.1", sae=sae, edits=[Edit(5, 8.0)]),
        AddVector("layers.2", vector=decoder_direction(sae, 5), alpha=3.0),
        AddVector("layers.2", vector=torch.ones(128), alpha=0.1),
    ]
    assert (_logits(model, ids, ivs) - clean).abs().max() > 1e-2
    with pytest.raises(RuntimeError, match="boom"), steering(model, ivs):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch.equal(_logits(model, ids), clean)


def test_a_plain_module_without_positions():
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    x = torch.randn(5, 4)
    v = torch.arange(6.0)
    with torch.no_grad(), steering(net, [AddVector("1", vector=v, alpha=2.0)]):
        got = net(x)
    assert torch.allclose(got, net[2](net[1](net[0](x)) + 2 * v))


def test_errors_are_one_line(glass, sae, ids):
    model, _ = glass
    with pytest.raises(InputError, match="out of range: the SAE has 512 features"):
        FeatureEdits("layers.1", sae=sae, edits=[Edit(512, 1.0)])
    with pytest.raises(InputError, match="not a finite number"):
        Edit(3, float("inf"))
    with pytest.raises(InputError, match="unknown edit mode 'clamp'"):
        Edit(3, 1.0, mode="clamp")
    with pytest.raises(ConfigError, match=r"no module 'layers\.9'"):
        with steering(model, [FeatureEdits("layers.9", sae=sae)]):
            pass
    wide = make_sae({"architecture": "topk", "d_in": 64, "d_sae": 128, "k": 4}).eval()
    with pytest.raises(InputError, match=r"d_in 64 but hook layers\.1 has width 128"):
        _logits(model, ids, [FeatureEdits("layers.1", sae=wide, edits=[Edit(0, 1.0)])])
    with pytest.raises(InputError, match="positions 'first'"):
        AddVector("layers.1", "first", vector=torch.ones(128))
    with pytest.raises(InputError, match=r"training mode .* call sae\.eval\(\)"):
        FeatureEdits(
            "layers.1", sae=make_sae({"architecture": "topk", "d_in": 128, "d_sae": 256, "k": 4})
        )
    transcoder = make_sae(
        {
            "architecture": "relu",
            "d_in": 128,
            "d_sae": 256,
            "d_out": 64,
            "apply_b_dec_to_input": False,
        }
    ).eval()
    with pytest.raises(InputError, match="the SAE is a transcoder"):
        FeatureEdits("layers.1", sae=transcoder)
    with pytest.raises(InputError, match="outliers must be an OutlierRule or None, got float"):
        FeatureEdits("layers.1", sae=sae, outliers=10.0)


def test_positions_count_real_tokens_with_left_padding_too(glass, sae, ids):
    """Left padding (as Hugging Face batches prompts): positions are each row's real-token
    indices, so keep_first spares the first real token, "last" and -2 find the row's own."""
    model, _ = glass
    pads = torch.zeros(1, 4, dtype=torch.long)
    batch = torch.cat((ids[:, :12], torch.cat((pads, ids[:, :8]), 1)))
    mask = torch.ones_like(batch)
    mask[1, :4] = 0
    x = _residual(model, batch, "layers.1")
    for positions, want in [
        ("all", [list(range(1, 12)), list(range(5, 12))]),
        ("last", [[11], [11]]),
        ([0, -2], [[10], [10]]),
        (slice(2, 4), [[2, 3], [6, 7]]),
    ]:
        iv = AddVector("layers.1", positions, vector=torch.ones(128))
        with steering(model, [iv], attention_mask=mask):
            x2 = _residual(model, batch, "layers.1")
        changed = [(x2[r] - x[r]).abs().sum(1).nonzero().flatten().tolist() for r in range(2)]
        assert changed == want, positions

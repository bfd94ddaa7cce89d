"""Feature effects: ablation (the change in next-token loss, checked against a plain CE
computation) and direct logit effects (predicting what a small push at the last residual
does, with an SAE trained on glassllm)."""

import pytest
import torch
import torch.nn.functional as F

from saescope.errors import InputError
from saescope.runs import Run
from saescope.steer import AddVector, Edit, FeatureEdits, decoder_direction, steering
from saescope.steer.effects import ablate, direct_logits
from tests.steer.common import random_topk

# ----- ablation ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sae():
    return random_topk(128, 512, 16, seed=1, spread=0.3)


@pytest.fixture
def ids(glass):
    _, tok = glass
    text = (
        "Alice was beginning to get very tired of sitting by her sister on the bank, and of "
        "having nothing to do: once or twice she had peeped into the book her sister was "
        "reading, but it had no pictures or conversations in it"
    )
    row = torch.tensor(tok.encode(text))
    return torch.stack([row[:24], row[10:34], row[20:44]])


def _ce(logits, ids):
    """(B,) mean CE of the predictions from position 1 on (position 0 is kept clean)."""
    return F.cross_entropy(logits[:, 1:-1].transpose(1, 2), ids[:, 2:], reduction="none").mean(1)


def test_ablation_is_the_ce_difference_and_a_silent_feature_changes_nothing(glass, sae, ids):
    model, _ = glass
    x = {}
    with torch.no_grad(), steering(model, []):
        h = model.layers[1].register_forward_hook(lambda m, a, out: x.update(x=out))
        clean = model(ids)
        h.remove()
    f = sae.encode(x["x"][:, 1:])
    silent = int((f.reshape(-1, 512).sum(0) == 0).nonzero()[0])
    busy = [int(i) for i in f.reshape(-1, 512).sum(0).topk(2).indices]
    got = ablate(sae, model, "layers.1", ids, [busy[0], silent, busy[1]], batch_size=2)
    assert got.deltas.shape == (3, 3) and got.features == [busy[0], silent, busy[1]]
    assert torch.equal(got.deltas[1], torch.zeros(3))
    assert torch.allclose(got.clean, _ce(clean, ids), atol=1e-5)
    for row, i in zip(got.deltas, got.features, strict=True):
        edit = FeatureEdits("layers.1", sae=sae, edits=[Edit(i, mode="zero")])
        with torch.no_grad(), steering(model, [edit]):
            want = _ce(model(ids), ids) - _ce(clean, ids)
        assert torch.allclose(row, want, atol=1e-5)
    assert got.deltas[0].abs().max() > 1e-3  # the busy features do change the loss
    assert torch.allclose(got.mean, got.deltas.mean(1))
    # one batch of all the contexts gives the same numbers
    assert torch.allclose(ablate(sae, model, "layers.1", ids, got.features).deltas, got.deltas)


def test_ablation_of_a_padded_context_equals_the_unpadded_one(glass, sae, ids):
    model, _ = glass
    padded = ids.clone()
    padded[1, 16:] = 0
    mask = torch.ones_like(ids)
    mask[1, 16:] = 0
    both = ablate(sae, model, "layers.1", padded, [3, 7], attention_mask=mask)
    alone = ablate(sae, model, "layers.1", ids[1:2, :16], [3, 7])
    assert torch.allclose(both.deltas[:, 1], alone.deltas[:, 0], atol=1e-5)
    assert torch.allclose(both.clean[1], alone.clean[0], atol=1e-5)
    with pytest.raises(InputError, match="at least 3 positions"):
        ablate(sae, model, "layers.1", ids[:, :2], [3])


# ----- on glassllm, with a trained SAE --------------------------------------------------------


@pytest.fixture(scope="module")
def glass_run(glass_sae):
    run = Run.open(glass_sae)
    return run, next(iter(run.saes.values())), run.model


@pytest.mark.slow
def test_direct_logits_predict_a_push_at_the_last_residual(glass_run):
    # a small push along a feature's decoder direction at layers.3 (glassllm's last block)
    # changes the last position's logits as its direct logit effect says, up to the final
    # norm's denominator
    run, sae, model = glass_run
    ids = run.data.contexts("test")[:8]
    x = {}
    with torch.no_grad():
        h = model.layers[2].register_forward_hook(lambda m, a, out: x.update(x=out))
        clean = model(ids)[:, -1]
        h.remove()
    fired = (sae.encode(x["x"][:, 1:]) > 0).reshape(-1, sae.cfg.d_sae).sum(0)
    features = fired.topk(5).indices.tolist()
    direct = direct_logits(sae, model, features)
    for i, row in zip(features, direct, strict=True):
        push = AddVector("layers.3", "last", vector=decoder_direction(sae, i), alpha=0.5)
        with torch.no_grad(), steering(model, [push]):
            change = model(ids)[:, -1] - clean  # (8, vocab)
        corr = torch.stack([torch.corrcoef(torch.stack((c, row)))[0, 1] for c in change])
        assert corr.mean() >= 0.9, (i, corr)
        best = int(row.argmax())
        ranks = [(c > c[best]).sum() for c in change]
        assert max(ranks) < 16, (i, ranks)

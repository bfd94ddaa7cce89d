"""Feature effects: ablation (the change in next-token loss, checked against a plain CE
computation), attribution (exact where it must be on a toy model; agreeing with true ablation on
glassllm) and direct logit effects (predicting what a small push at the last residual does)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from saescope.errors import InputError
from saescope.runs import Run
from saescope.saes import make_sae
from saescope.steer import AddVector, Edit, FeatureEdits, decoder_direction, steering
from saescope.steer.attribution import attribute, true_ablation
from saescope.steer.effects import ablate, direct_logits

# ----- ablation ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sae():
    torch.manual_seed(1)
    s = make_sae({"architecture": "topk", "d_in": 128, "d_sae": 512, "k": 16}).eval()
    with torch.no_grad():
        s.W_enc.normal_(0, 0.3)
    return s


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


# ----- attribution on a toy model -------------------------------------------------------------


class Toy(nn.Module):
    """ids -> logits through `proj` (the hook), a causal running mean over positions, and the
    head, squared first when quadratic: then the logits are a quadratic function of `proj`'s
    output, else a linear one."""

    def __init__(self, quadratic: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(40, 8)
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 40)
        self.quadratic = quadratic

    def forward(self, ids):
        h = self.proj(self.embed(ids))
        m = h.cumsum(1) / torch.arange(1, ids.shape[1] + 1)[:, None]
        return self.head(m * m if self.quadratic else m)


@pytest.fixture(scope="module")
def toy_sae():
    torch.manual_seed(3)
    s = make_sae({"architecture": "topk", "d_in": 8, "d_sae": 32, "k": 4}).eval()
    with torch.no_grad():
        s.W_enc.normal_(0, 0.5)
    return s


def _toy(quadratic):
    torch.manual_seed(4)
    return Toy(quadratic)


def test_attribution_is_exact_on_a_linear_model_and_midpoint_on_a_quadratic(toy_sae):
    ids = torch.randint(0, 40, (3, 10))
    linear, quadratic = _toy(False), _toy(True)
    plain = attribute(toy_sae, linear, "proj", ids, target=5, midpoint=False)
    every = plain.values.abs().sum(0).nonzero().flatten().tolist()
    assert len(every) > 8
    truth = true_ablation(toy_sae, linear, "proj", ids, every, target=5)
    assert torch.allclose(plain.values[:, every].t(), truth, atol=1e-5)
    # the logit's clean value, and the default target: each context's top prediction
    with torch.no_grad():
        top = quadratic(ids)[:, -1]
    got = attribute(toy_sae, quadratic, "proj", ids)
    assert torch.equal(got.target, top.argmax(-1)) and torch.allclose(got.logit, top.max(-1)[0])
    # quadratic: the midpoint rule is exact for the features active at the target position
    x = toy_sae.encode(quadratic.proj(quadratic.embed(ids))[:, -1])
    for c in range(3):
        at = (x[c] > 0).nonzero().flatten().tolist()
        truth = true_ablation(toy_sae, quadratic, "proj", ids[c : c + 1], at, got.target[c])
        assert torch.allclose(got.values[c, at], truth[:, 0], atol=1e-5)
        plain = attribute(toy_sae, quadratic, "proj", ids[c : c + 1], midpoint=False)
        assert (plain.values[0, at] - truth[:, 0]).abs().max() > 1e-2  # first order is not
        # the features active only at earlier positions keep their first-order attribution
        rest = [i for i in range(32) if i not in at]
        assert torch.allclose(plain.values[0, rest], got.values[c, rest], atol=1e-6)
        assert got.values[c, rest].abs().sum() > 0


def test_attribution_takes_no_gradient_of_parameters_and_checks_its_input(toy_sae):
    model = _toy(True)
    ids = torch.randint(0, 40, (2, 6))
    got = attribute(toy_sae, model, "proj", ids, position=3)
    assert torch.equal(got.position, torch.tensor([3, 3]))
    assert all(p.grad is None for p in [*model.parameters(), *toy_sae.parameters()])
    assert not got.values.requires_grad
    # position 0 is kept, so nothing is attributed to a logit there
    assert torch.equal(
        attribute(toy_sae, model, "proj", ids, position=0).values, torch.zeros(2, 32)
    )
    with pytest.raises(InputError, match="position 6 is outside the contexts"):
        attribute(toy_sae, model, "proj", ids, position=6)
    with pytest.raises(InputError, match="ids must be"):
        attribute(toy_sae, model, "proj", ids[0])
    wide = make_sae({"architecture": "topk", "d_in": 16, "d_sae": 32, "k": 4})
    with pytest.raises(InputError, match="d_in 16 but hook proj has width 8"):
        attribute(wide, model, "proj", ids)


# ----- on glassllm, with a trained SAE --------------------------------------------------------


@pytest.fixture(scope="module")
def glass_run(glass_sae):
    run = Run.open(glass_sae)
    return run, next(iter(run.saes.values())), run.model


def _agree(attr: list[tuple[int, float]], truth: list[float]) -> tuple[bool, int]:
    """(every sign agrees, how many are within 20 % of the true change)."""
    signs = all((a > 0) == (t > 0) for (_, a), t in zip(attr, truth, strict=True))
    close = sum(abs(a - t) <= 0.2 * abs(t) for (_, a), t in zip(attr, truth, strict=True))
    return signs, close


@pytest.mark.slow
def test_attribution_agrees_with_true_ablation_on_glassllm(glass_run):
    # the first 4 held-out contexts, target: the model's top next token at the last position
    run, sae, model = glass_run
    ids = run.data.contexts("test")[:4]
    rule = run.outliers
    got = attribute(sae, model, "layers.2", ids, outliers=rule)
    plain = attribute(sae, model, "layers.2", ids, outliers=rule, midpoint=False)
    assert torch.allclose(plain.logit, got.logit, atol=1e-4)
    for c in range(4):
        one = ids[c : c + 1]
        for a, need in ((got, 4), (plain, 0)):
            top = a.top(5, context=c)
            truth = true_ablation(sae, model, "layers.2", one, [i for i, _ in top], a.target[c])
            signs, close = _agree(top, truth[:, 0].tolist())
            assert signs, (c, top, truth)
            assert close >= need, (c, top, truth)
    # the summed logit of the 4 contexts
    top = got.top(5)
    truth = true_ablation(sae, model, "layers.2", ids, [i for i, _ in top], got.target)
    signs, close = _agree(top, truth.sum(1).tolist())
    assert signs and close >= 4, (top, truth.sum(1))


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

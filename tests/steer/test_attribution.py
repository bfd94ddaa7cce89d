"""Attribution to a logit: exact where it must be on a toy model (plain activation x gradient
where the model is linear, the midpoint rule where it is quadratic), no gradient left in any
parameter, and agreement with true ablation on glassllm with a trained SAE."""

import pytest
import torch
from torch import nn

from saescope.errors import InputError
from saescope.runs import Run
from saescope.saes import make_sae
from saescope.steer.attribution import attribute, true_ablation
from tests.steer.common import random_topk

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
    return random_topk(8, 32, 4, seed=3, spread=0.5)


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
    wide = make_sae({"architecture": "topk", "d_in": 16, "d_sae": 32, "k": 4}).eval()
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

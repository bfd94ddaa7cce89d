"""Toy models of superposition: geometry metrics and the intro experiment."""

import math

import pytest
import torch

from saescope.toy import (
    ToyConfig,
    dimensions_per_feature,
    feature_dimensionality,
    hidden_angles,
    sample,
    weighted_error,
)


def _polygon(k: int) -> torch.Tensor:
    t = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    return torch.stack([t.cos(), t.sin()], dim=1)


@pytest.mark.parametrize(
    ("W", "expected"),
    [
        (torch.eye(3, dtype=torch.float64), 1.0),  # dedicated dimensions
        (_polygon(2), 1 / 2),  # antipodal pair
        (_polygon(3), 2 / 3),  # triangle
        (_polygon(5), 2 / 5),  # pentagon
        (torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / 3**0.5, 3 / 4),
    ],
    ids=["identity", "antipodal", "triangle", "pentagon", "tetrahedron"],
)
def test_feature_dimensionality_of_exact_polytopes(W, expected):
    d = feature_dimensionality(W.double())
    torch.testing.assert_close(d, torch.full_like(d, expected))


def test_unrepresented_feature_has_zero_dimensionality():
    W = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert feature_dimensionality(W).tolist() == [1.0, 0.0]
    assert float(dimensions_per_feature(W)[0]) == 2.0


def test_hidden_angles_of_a_pentagon():
    assert hidden_angles(_polygon(5).float()) == pytest.approx([72.0] * 5, abs=1e-4)


@pytest.mark.parametrize("value_range", [(0.0, 1.0), (0.5, 2.0)])
def test_sample_is_its_recipe_bitwise(value_range):
    """Each feature is lo + (hi - lo) * u / p where its uniform u < p, else +0."""
    density = (*(float(20 ** (-k / 19)) for k in range(20)), 1.0, 0.15, 0.01)
    cfg = ToyConfig(n_features=7, n_hidden=2, density=density, value_range=value_range)
    x = sample(cfg, 512, torch.Generator().manual_seed(3))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))
    p = torch.tensor(density)[:, None, None]
    lo, hi = value_range
    want = torch.where(u < p, lo + (hi - lo) * (u / p), torch.zeros(()))
    assert torch.equal(x, want) and torch.equal(x.signbit(), want.signbit())


def test_below_the_density_is_below_one_after_dividing():
    """sample's mask rests on u < p exactly when fl(u / p) < 1 (floats u >= 0, 0 < p <= 1):
    checked on the 200 floats around each density the experiments use, and 0."""
    levels = [float(20**-t) for t in torch.linspace(0, 1, 10)]
    for p in [*levels, *(float(20 ** (-k / 19)) for k in range(20)), 0.15, 0.01, 1e-30]:
        pt = torch.tensor(p)
        near = (pt.view(torch.int32) + torch.arange(-100, 101, dtype=torch.int32)).view(
            torch.float32
        )
        u = torch.cat([near, torch.zeros(1)])
        assert torch.equal(u / pt < 1, u < pt), p


@pytest.mark.parametrize("relu", [True, False])
def test_weighted_error_is_autograds_bitwise(relu):
    g = torch.Generator().manual_seed(0)
    cfg = ToyConfig(n_features=5, n_hidden=2, density=(1.0, 0.3, 0.05))
    x = sample(cfg, 64, g)
    pre = torch.randn(x.shape, generator=g).requires_grad_()
    importance = torch.rand(3, 1, 5, generator=g)
    out = pre.relu() if relu else pre
    want = (importance * (out - x) ** 2).mean(dim=(1, 2)).sum()
    (want_grad,) = torch.autograd.grad(want, pre)
    mine = pre.detach().clone().requires_grad_()
    loss = weighted_error(mine, x, importance, relu)
    loss.backward()
    assert torch.equal(loss, want)
    assert torch.equal(mine.grad, want_grad) and torch.equal(
        mine.grad.signbit(), want_grad.signbit()
    )


def test_config_rejects_bad_shapes():
    with pytest.raises(ValueError, match="n_hidden"):
        ToyConfig(n_features=2, n_hidden=3)


def test_weighted_error_refuses_a_second_backward():
    """Its backward reuses its saved tensor, so a second one (retain_graph) would be wrong."""
    from saescope.toy import weighted_error

    pre = torch.randn(2, 4, 3, requires_grad=True)
    loss = weighted_error(pre, torch.rand(2, 4, 3), torch.rand(2, 1, 3))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once"):
        loss.backward()

import math

import torch

from saescope import ops


def test_topk_activation_keeps_k_largest_relu():
    pre = torch.tensor([[3.0, -1.0, 2.0, 0.5], [-2.0, -1.0, -3.0, 0.1]])
    f = ops.topk_activation(pre, 2)
    assert torch.equal(f, torch.tensor([[3.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.1]]))


def test_batch_topk_keeps_n_times_k_over_the_batch():
    pre = torch.tensor([[5.0, 4.0, 3.0], [0.1, 0.2, 0.3]])
    f, min_kept = ops.batch_topk_activation(pre, 1.5)  # 3 of 6 entries
    assert torch.equal(f, torch.tensor([[5.0, 4.0, 3.0], [0.0, 0.0, 0.0]]))
    assert float(min_kept) == 3.0


def test_geometric_median_resists_outliers():
    pts = torch.cat([torch.zeros(50, 2), torch.full((5, 2), 1000.0)])
    med = ops.geometric_median(pts)
    assert med.norm() < 1.0 < pts.mean(0).norm()
    # Three collinear points: the median is the middle one.
    torch.testing.assert_close(
        ops.geometric_median(torch.tensor([[0.0], [1.0], [10.0]])),
        torch.tensor([1.0], dtype=torch.float64),
        atol=1e-4,
        rtol=0,
    )


def test_remove_parallel_grad_is_orthogonal_to_rows():
    w = torch.randn(8, 5)
    g = torch.randn(8, 5)
    g2 = ops.remove_parallel_grad_(w, g.clone())
    torch.testing.assert_close((g2 * w).sum(1), torch.zeros(8), atol=1e-6, rtol=0)
    # A step along the cleaned gradient keeps the row norm to first order.
    step = 1e-3
    before = w.norm(dim=1)
    after = (w - step * g2).norm(dim=1)
    assert (after - before).abs().max() < 10 * step**2 * g2.norm(dim=1).max() ** 2 / before.min()


def test_jumprelu_pseudo_derivatives():
    z = torch.tensor([[0.50, 1.00, 1.02, 2.0]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0, 1.0, 1.0], requires_grad=True)
    eps = 0.1
    f = ops.jumprelu(z, theta, eps)
    assert torch.equal(f.detach(), torch.tensor([[0.0, 0.0, 1.02, 2.0]]))
    f.sum().backward()
    # df/dz = H(z - theta); df/dtheta = -(theta/eps) K((z - theta)/eps) with K = 1[|u| < 1/2]
    assert torch.equal(z.grad, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    torch.testing.assert_close(theta.grad, torch.tensor([0.0, -10.0, -10.0, 0.0]))


def test_step_pseudo_derivatives():
    z = torch.tensor([[0.96, 1.2]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0], requires_grad=True)
    h = ops.step(z, theta, 0.1)
    assert torch.equal(h.detach(), torch.tensor([[0.0, 1.0]]))
    h.sum().backward()
    assert torch.equal(z.grad, torch.zeros(1, 2))
    torch.testing.assert_close(theta.grad, torch.tensor([-10.0, 0.0]))


def test_auxk_uses_only_dead_latents():
    pre = torch.tensor([[5.0, 1.0, 2.0, 3.0]])
    dead = torch.tensor([False, True, True, False])
    assert torch.equal(ops.auxk_topk(pre, dead, 1), torch.tensor([[0.0, 0.0, 2.0, 0.0]]))
    assert ops.auxk_topk(pre, torch.zeros(4, dtype=torch.bool), 3).abs().sum() == 0


def test_fvu():
    t = torch.tensor([[1.0], [3.0]])
    assert math.isclose(float(ops.fvu(t - t.mean(), t)), 1.0)


def test_unit_rows_in_place():
    w = torch.randn(6, 4) * 3
    out = ops.unit_rows_(w)
    assert out is w
    torch.testing.assert_close(w.norm(dim=1), torch.ones(6))


def test_squared_error_matches_the_composed_ops_and_their_gradients():
    g = torch.Generator().manual_seed(0)
    y_hat = torch.randn(3, 7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    ref_hat, ref_y = (t.detach().clone().requires_grad_() for t in (y_hat, y))
    got = ops.squared_error(y_hat, y)
    want = (ref_hat - ref_y).pow(2).sum(-1).mean()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    got.backward(torch.tensor(1.7, dtype=torch.float64))
    want.backward(torch.tensor(1.7, dtype=torch.float64))
    torch.testing.assert_close(y_hat.grad, ref_hat.grad, rtol=1e-12, atol=0)
    torch.testing.assert_close(y.grad, ref_y.grad, rtol=1e-12, atol=0)
    try:
        ops.squared_error(y_hat, y[0])
    except ValueError as e:
        assert "one shape" in str(e)
    else:
        raise AssertionError("shapes that differ must be refused")


def test_topk_indices_pick_the_k_largest_with_or_without_the_kernels(monkeypatch):
    scores = torch.randn(300, 50)
    scores[7, 3] = float("nan")  # a row the kernel leaves to torch
    want = scores.topk(4, dim=-1).indices.sort(-1).values
    got = ops.topk_indices(scores, 4).sort(-1).values
    assert torch.equal(got, want)
    monkeypatch.setattr(ops.native, "usable", lambda *_: False)
    assert torch.equal(ops.topk_indices(scores, 4).sort(-1).values, want)
    flat = scores[:5].nan_to_num().reshape(1, -1)  # one long row, as BatchTopK uses it
    idx = ops.topk_indices(flat, 37)
    assert torch.equal(idx.sort(-1).values, flat.topk(37).indices.sort(-1).values)

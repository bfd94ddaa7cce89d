"""Pure tensor math shared by the SAE family: no state, no I/O.

Shapes: N tokens, M = d_sae latents, D = d_in (or d_out for decoder-side tensors).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from saescope import native


def topk_indices(scores: Tensor, k: int) -> Tensor:
    """Indices (N, k) of the k largest entries of each row of scores (N, M), in no particular
    order. The compiled kernel where it can (4x torch.topk's speed on the small batches of
    the synthetic tasks), else torch.topk; the two differ only in which of tied entries they
    pick."""
    if scores.dim() == 2 and scores.stride(-1) == 1 and native.usable(scores):
        got = native.topk_bias(scores.detach(), scores.new_zeros(scores.shape[1]), k)
        if got is not None:  # None: a row holds NaN or inf, torch decides
            return got[0]
    return scores.topk(k, dim=-1, sorted=False).indices


def topk_activation(pre: Tensor, k: int) -> Tensor:
    """Keep the k largest pre-activations of each row, ReLU them, zero the rest.

    pre: (N, M) -> f: (N, M). Gradient flows only through the kept entries (Gao et al. 2024).
    """
    idx = topk_indices(pre, k)  # (N, k)
    return torch.zeros_like(pre).scatter(-1, idx, pre.gather(-1, idx).relu())


def batch_topk_activation(pre: Tensor, k: float) -> tuple[Tensor, Tensor]:
    """Keep the N*k largest ReLU'd pre-activations of the whole batch (Bussmann et al. 2024).

    Returns f (N, M) and the smallest positive value kept (a 0-d tensor; 0 when none is),
    which feeds the inference threshold's running average.
    """
    n_keep = batch_topk_count(k, pre.shape[0], pre.shape[1])
    flat = pre.relu().flatten()
    idx = topk_indices(flat.unsqueeze(0), n_keep)[0]
    vals = flat.gather(0, idx)
    f = torch.zeros_like(flat).scatter(0, idx, vals).view_as(pre)
    return f, smallest_positive(vals.detach())


def smallest_positive(vals: Tensor) -> Tensor:
    """The smallest positive entry (a 0-d tensor), or 0 when there is none."""
    positive = vals[vals > 0]
    return positive.min() if positive.numel() else vals.new_zeros(())


def batch_topk_count(k: float, n: int, m: int) -> int:
    """How many codes BatchTopK keeps in a batch of n tokens over m latents: int(k * n), as
    SAELens's BatchTopK computes it (dictionary_learning's k is whole), at least one."""
    return max(1, min(n * m, int(k * n)))


def _rectangle(u: Tensor) -> Tensor:
    """Rectangle kernel K(u) = 1[|u| < 1/2]."""
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """f = z * H(z - theta) with the straight-through pseudo-derivatives of
    Rajamanoharan et al. 2024 (arXiv 2407.14435, eq. 11):
    df/dz = H(z - theta), df/dtheta = -(theta / eps) K((z - theta) / eps)."""

    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_z = grad_out * (z > theta).to(z.dtype)
        grad_theta = -(theta / eps) * _rectangle((z - theta) / eps) * grad_out
        return grad_z, _sum_to(grad_theta, theta.shape), None


class _Step(torch.autograd.Function):
    """H(z - theta) with dH/dz = 0 and dH/dtheta = -(1/eps) K((z - theta)/eps)."""

    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_theta = -(1.0 / eps) * _rectangle((z - theta) / eps) * grad_out
        return torch.zeros_like(z), _sum_to(grad_theta, theta.shape), None


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Reduce a broadcast gradient (N, M) back to the parameter's shape (M,)."""
    return grad.sum_to_size(shape)


def jumprelu(z: Tensor, theta: Tensor, eps: float) -> Tensor:
    """JumpReLU with straight-through threshold gradients. z: (N, M), theta: (M,)."""
    return _JumpReLU.apply(z, theta, eps)


def step(z: Tensor, theta: Tensor, eps: float) -> Tensor:
    """Heaviside step H(z - theta) with straight-through threshold gradients."""
    return _Step.apply(z, theta, eps)


def geometric_median(points: Tensor, iters: int = 100, tol: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances.

    points: (N, D) -> (D,). Robust to outliers, unlike the mean (Bricken et al. 2023 init of b_dec).
    """
    points = points.double()
    guess = points.mean(0)
    for _ in range(iters):
        dist = (points - guess).norm(dim=1).clamp_min(1e-12)  # (N,)
        w = 1.0 / dist
        new = (w[:, None] * points).sum(0) / w.sum()
        moved = (new - guess).norm()
        guess = new
        if moved <= tol * guess.norm().clamp_min(1.0):
            break
    return guess


def unit_rows(w: Tensor, eps: float = 1e-12) -> Tensor:
    """Rows of w scaled to unit L2 norm."""
    return w / w.norm(dim=-1, keepdim=True).clamp_min(eps)


def remove_parallel_grad_(w: Tensor, grad: Tensor, eps: float = 1e-12) -> Tensor:
    """Remove from each row of grad, in place, its component along the same row of w.

    Keeps a unit-norm decoder on the sphere to first order before the optimiser step:
    g_i <- g_i - (g_i . w_i) w_i / ||w_i||^2 (Bricken et al. 2023). One pass over the rows
    with the compiled kernels (`saescope.native`), else three; no (M, D) temporary.
    Returns grad.
    """
    if w.dim() == 2 and w.is_contiguous() and grad.is_contiguous() and native.usable(w, grad):
        return native.remove_parallel_(grad, w, eps * eps)
    coef = torch.linalg.vecdot(grad, w) / torch.linalg.vecdot(w, w).clamp_min(eps * eps)
    return grad.addcmul_(w, coef.unsqueeze(-1), value=-1.0)


def unit_rows_(w: Tensor, eps: float = 1e-12) -> Tensor:
    """Scale the rows of w to unit L2 norm in place; returns w."""
    return w.div_(torch.linalg.vector_norm(w, dim=-1, keepdim=True).clamp_min(eps))


def auxk_topk(pre: Tensor, dead: Tensor, k_aux: int) -> Tensor:
    """Top-k_aux ReLU'd pre-activations among dead latents only (Gao et al. 2024, App. A.2).

    pre: (N, M), dead: (M,) bool -> (N, M) with at most k_aux non-zeros per row, on dead latents.
    """
    k_aux = min(k_aux, int(dead.sum()))
    if k_aux == 0:
        return torch.zeros_like(pre)
    masked = pre.masked_fill(~dead, float("-inf"))
    vals, idx = masked.topk(k_aux, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, idx, vals.relu())


def fvu(residual: Tensor, target: Tensor) -> Tensor:
    """The fraction of variance unexplained: the sum of squared residuals over the target's
    total variance (its squared deviation from its mean); 0 when the residual is 0."""
    var = (target - target.mean(0)).pow(2).sum()
    return residual.pow(2).sum() / var.clamp_min(1e-12)


class _SquaredError(torch.autograd.Function):
    """Sum over the last axis of (y_hat - y)^2, mean over the rest, in three passes over the
    (N, D) tensors for forward and backward together (the composed ops take six)."""

    @staticmethod
    def forward(ctx: FunctionCtx, y_hat: Tensor, y: Tensor) -> Tensor:
        e = (y_hat - y).reshape(-1)
        ctx.save_for_backward(e)
        ctx.shape = y_hat.shape  # type: ignore[attr-defined]
        ctx.tokens = max(e.numel() // max(y_hat.shape[-1], 1), 1)  # type: ignore[attr-defined]
        return e.dot(e) / ctx.tokens  # type: ignore[attr-defined]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None]:
        (e,) = ctx.saved_tensors
        need_hat, need_y = ctx.needs_input_grad
        grad = e.mul(g * (2.0 / ctx.tokens)).view(ctx.shape)
        return (grad if need_hat else None), (grad.neg() if need_y else None)


def squared_error(y_hat: Tensor, y: Tensor) -> Tensor:
    """Squared error summed over the last axis, mean over the others (the SAE's MSE term);
    y_hat and y of one shape."""
    if y_hat.shape != y.shape:
        shapes = f"{tuple(y_hat.shape)} and {tuple(y.shape)}"
        raise ValueError(f"squared_error needs tensors of one shape, got {shapes}")
    return _SquaredError.apply(y_hat, y)

"""Sparse-aware autograd for TopK SAEs: only the work the k active latents need.

A TopK SAE's features f (N, M) hold k non-zeros per row, so they are carried as
(idx, vals), both (N, k): row n has value vals[n, s] at latent idx[n, s]. The dense path
spends three N x M x D products in the backward pass (grad of W_enc, grad of W_dec, and
grad of f through W_dec) and two in the forward; here the encoder's forward product is the
only dense one (exact top-k needs every pre-activation), and nothing of size N x M is kept.

Backward pieces, with G (N, M) the sparse gradient of pre and W_enc (D, M):
- grad W_enc = xc^T G and grad W_dec = f^T grad_out: a CSR (M, N) times a dense (N, D)
  (`_scatter_rows`), O(N k D). A stable sort of idx by latent builds the CSR; faster on
  CPU than index_add_, embedding_bag's own backward or the dense product.
- grad vals of the decoder = the rows of grad_out W_dec^T at idx: a sampled dense-dense
  product (`torch.sparse.sampled_addmm`), O(N k D), no (N, k, D) gather.
- grad b_enc = the column sums of G (index_add_); the encoder's part of grad b_dec is
  -W_enc colsum(G), one matrix-vector product instead of -sum_n G[n] W_enc^T.
- grad x (only when asked) = G W_enc^T, a gather-sum (embedding_bag).

Indices within a row must be distinct (top-k's are); the encoder returns them sorted.
Shapes: N tokens, M = d_sae latents, D = d_in or d_out. Works on CPU and CUDA.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

# ----- sparse primitives --------------------------------------------------------------------


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR matrix, without torch's once-per-process "beta" warning (an error under
    pytest's filterwarnings=error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            crow, col, values, shape, dtype=values.dtype, check_invariants=False
        )


def _gather_sum(idx: Tensor, w: Tensor, table: Tensor) -> Tensor:
    """out[n] = sum_s w[n, s] table[idx[n, s]]. idx, w (N, k), table (M, D) -> (N, D)."""
    if idx.shape[1] == 0:
        return table.new_zeros(idx.shape[0], table.shape[1])
    return F.embedding_bag(idx, table, per_sample_weights=w, mode="sum")


def _gather_dot(idx: Tensor, y: Tensor, table: Tensor) -> Tensor:
    """out[n, s] = y[n] . table[idx[n, s]]. idx (N, k), y (N, D), table (M, D) -> (N, k)."""
    n, k = idx.shape
    if k == 0:
        return y.new_zeros(n, 0)
    crow = torch.arange(0, n * k + 1, k, device=idx.device)
    pattern = _csr(crow, idx.reshape(-1), y.new_zeros(n * k), (n, table.shape[0]))
    return torch.sparse.sampled_addmm(pattern, y, table.t(), beta=0.0).values().view(n, k)


def _scatter_rows(idx: Tensor, w: Tensor, y: Tensor, m: int) -> Tensor:
    """out[j] = sum over (n, s) with idx[n, s] = j of w[n, s] y[n], i.e. G^T y with G (N, M)
    holding w at idx. idx, w (N, k), y (N, D) -> (M, D)."""
    n, k = idx.shape
    if k == 0:
        return y.new_zeros(m, y.shape[1])
    flat = idx.reshape(-1)
    # By latent, tokens ascending within each latent; int32 keys sort faster on CPU.
    order = (flat.to(torch.int32) if m < 2**31 else flat).argsort(stable=True)
    crow = torch.zeros(m + 1, dtype=torch.int64, device=idx.device)
    crow[1:] = torch.bincount(flat, minlength=m).cumsum(0)
    return _csr(crow, order // k, w.reshape(-1)[order], (m, n)) @ y


def _topk_sorted(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest entries of each row, ReLU'd, as (idx, vals) with idx ascending."""
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    idx, perm = idx.sort(dim=-1)
    return idx, vals.gather(-1, perm).relu_()


# ----- autograd Functions -------------------------------------------------------------------


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx, idx: Tensor, vals: Tensor, W_dec: Tensor, b_dec: Tensor | None
    ) -> Tensor:
        out = _gather_sum(idx, vals, W_dec)
        if b_dec is not None:
            out = out + b_dec
        ctx.save_for_backward(idx, vals, W_dec)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        idx, vals, W_dec = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        _, need_vals, need_W, need_b = ctx.needs_input_grad
        grad_vals = _gather_dot(idx, grad_out, W_dec) if need_vals else None
        grad_W = _scatter_rows(idx, vals, grad_out, W_dec.shape[0]) if need_W else None
        grad_b = grad_out.sum(0) if need_b else None
        return None, grad_vals, grad_W, grad_b


class _TopKEncode(torch.autograd.Function):
    """(idx, vals) of the k largest ReLU'd pre-activations, plus (aux_idx, aux_vals) of the
    k_aux largest among `dead` latents, from one encoder product. Saves the centred input
    (N, D), W_enc and the four (N, k)/(N, k_aux) outputs; pre itself is freed."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        b_dec: Tensor | None,
        k: int,
        dead: Tensor | None,
        k_aux: int,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        xc = x if b_dec is None else x - b_dec
        pre = torch.addmm(b_enc, xc, W_enc)  # (N, M), the one dense product
        idx, vals = _topk_sorted(pre, k)
        if dead is not None:
            k_aux = min(k_aux, int(dead.sum()))
        if dead is not None and k_aux > 0:
            aux_idx, aux_vals = _topk_sorted(pre.masked_fill_(~dead, float("-inf")), k_aux)
        else:
            aux_idx, aux_vals = idx.new_empty(idx.shape[0], 0), vals.new_empty(idx.shape[0], 0)
        del pre
        ctx.save_for_backward(xc, W_enc, idx, vals, aux_idx, aux_vals)
        ctx.mark_non_differentiable(idx, aux_idx)
        ctx.set_materialize_grads(False)
        return idx, vals, aux_idx, aux_vals

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, _g_idx: None, g_vals: Tensor | None, _g_aux_idx: None, g_aux: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        xc, W_enc, idx, vals, aux_idx, aux_vals = ctx.saved_tensors
        need_x, need_W, need_b_enc, need_b_dec = ctx.needs_input_grad[:4]
        m = W_enc.shape[1]
        # The non-zeros of G = d loss / d pre: ReLU'd-to-zero entries pass no gradient.
        parts = [
            (i, g * (v > 0))
            for i, v, g in ((idx, vals, g_vals), (aux_idx, aux_vals, g_aux))
            if g is not None and i.shape[1] > 0
        ]
        if not parts:
            return (None,) * 7
        grad_x = grad_W = grad_b_enc = grad_b_dec = None
        if need_W:
            grad_W = _scatter_rows(*parts[0], xc, m)
            for i, g in parts[1:]:
                grad_W += _scatter_rows(i, g, xc, m)
            grad_W = grad_W.t()  # (D, M), the layout of W_enc
        if need_b_enc or need_b_dec:
            col_sum = xc.new_zeros(m)
            for i, g in parts:
                col_sum.index_add_(0, i.reshape(-1), g.reshape(-1))
            grad_b_enc = col_sum if need_b_enc else None
            grad_b_dec = -(W_enc @ col_sum) if need_b_dec else None
        if need_x:
            grad_x = _gather_sum(*parts[0], W_enc.t())
            for i, g in parts[1:]:
                grad_x += _gather_sum(i, g, W_enc.t())
        return grad_x, grad_W, grad_b_enc, grad_b_dec, None, None, None


# ----- public API ---------------------------------------------------------------------------


def sparse_decode(idx: Tensor, vals: Tensor, W_dec: Tensor, b_dec: Tensor | None) -> Tensor:
    """f @ W_dec + b_dec for f given as (idx, vals), both (N, k); W_dec (M, D) -> (N, D).

    b_dec None decodes without bias (AuxK). Gradients reach vals, W_dec and b_dec; each
    costs O(N k D), and the backward keeps only idx, vals and W_dec.
    """
    return _SparseDecode.apply(idx, vals, W_dec, b_dec)


def topk_encode_sparse(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor | None, k: int
) -> tuple[Tensor, Tensor]:
    """The k largest ReLU'd pre-activations of pre = (x - b_dec) W_enc + b_enc per row.

    x (N, D), W_enc (D, M), b_enc (M,), b_dec (D,) or None (no centring) -> (idx, vals),
    both (N, k), idx ascending within each row. Same values and gradients as
    ops.topk_activation on the dense pre; the backward keeps no N x M tensor.
    """
    idx, vals, _, _ = _TopKEncode.apply(x, W_enc, b_enc, b_dec, k, None, 0)
    return idx, vals


def topk_encode_sparse_aux(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    b_dec: Tensor | None,
    k: int,
    dead: Tensor,
    k_aux: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`topk_encode_sparse` plus the AuxK selection (ops.auxk_topk) from the same product:
    (idx, vals, aux_idx, aux_vals), the last two (N, min(k_aux, dead.sum())) over the
    latents where `dead` (M,) is True. Both selections' gradients reach W_enc and b_enc."""
    return _TopKEncode.apply(x, W_enc, b_enc, b_dec, k, dead, k_aux)


def densify(idx: Tensor, vals: Tensor, m: int) -> Tensor:
    """(idx, vals) (N, k) -> the dense (N, m) matrix they describe (differentiable in vals)."""
    return vals.new_zeros(idx.shape[0], m).scatter(1, idx, vals)


class TopKLike(Protocol):
    """What `topk_sae_forward_sparse` reads from a TopK SAE (saes.topk.TopKSAE fits)."""

    W_enc: Tensor
    b_enc: Tensor
    W_dec: Tensor
    b_dec: Tensor
    cfg: Any  # k, k_aux, apply_b_dec_to_input


@dataclass(frozen=True)
class SparseForward:
    """A TopK SAE's forward pass in sparse form."""

    y_hat: Tensor
    """(N, d_out) reconstruction f W_dec + b_dec."""
    idx: Tensor
    """(N, k) active latents, ascending within each row."""
    vals: Tensor
    """(N, k) their ReLU'd activations."""
    aux_idx: Tensor | None = None
    """(N, k_aux) AuxK latents among the dead ones; None without dead latents."""
    aux_vals: Tensor | None = None
    """(N, k_aux) their ReLU'd pre-activations."""
    aux_hat: Tensor | None = None
    """(N, d_out) AuxK reconstruction of the residual, decoded without bias."""


def topk_sae_forward_sparse(sae: TopKLike, x: Tensor, dead: Tensor | None = None) -> SparseForward:
    """The sparse equivalent of TopKSAE.loss's forward for x (N, d_in): y_hat, the codes and,
    when `dead` (d_sae,) bool has any True, AuxK's reconstruction z_aux @ W_dec. Gradients
    equal the dense path's; the AuxK loss on aux_hat reaches the dead latents' W_enc/b_enc."""
    b_dec = sae.b_dec if sae.cfg.apply_b_dec_to_input else None
    if dead is None or not bool(dead.any()):
        idx, vals = topk_encode_sparse(x, sae.W_enc, sae.b_enc, b_dec, sae.cfg.k)
        return SparseForward(sparse_decode(idx, vals, sae.W_dec, sae.b_dec), idx, vals)
    idx, vals, aux_idx, aux_vals = topk_encode_sparse_aux(
        x, sae.W_enc, sae.b_enc, b_dec, sae.cfg.k, dead, sae.cfg.k_aux
    )
    return SparseForward(
        sparse_decode(idx, vals, sae.W_dec, sae.b_dec),
        idx,
        vals,
        aux_idx,
        aux_vals,
        sparse_decode(aux_idx, aux_vals, sae.W_dec, None),
    )

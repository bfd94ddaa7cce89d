"""Sparse-aware autograd for the SAE family: only the work the active latents need.

An SAE's codes f (N, M) have few non-zeros per row, so the fast path carries them as a
`Pattern` (their positions, CSR by row) plus a values vector (nnz,). The encoder's forward
product pre = (x - b_dec) W_enc + b_enc is the one dense piece of work (every latent has to
be looked at to choose the active ones); after the choice `pre` is freed, and nothing of size
N x M is kept for the backward pass.

`encode` returns the pre-activations z at the chosen positions, differentiable in x, W_enc,
b_enc and b_dec; each architecture applies its activation (ReLU, JumpReLU) to z elementwise
with ordinary autograd, and `decode` maps (pattern, values) back through W_dec (`decode_error`
also returns the MSE term, in fewer passes). Choosers: `topk` (per token), `batch_topk` (per
batch), `above` (z > threshold: ReLU and the JumpReLU band where the threshold's
pseudo-gradient lives) and `aux_topk` (AuxK among dead latents).

On the CPU the compiled kernels (`saescope.native`) do the scans and gathers when they are
there: the choosers then read the bias-free product, adding the bias on the fly. Otherwise
each step below is plain torch, with the same results.

Backward pieces, with G (N, M) the sparse gradient of pre:
- grad W_enc = xc^T G and grad W_dec = f^T grad_out: gather-sums over the non-zeros sorted by
  latent (`_scatter_rows`), O(nnz D); the by-latent sort is made once per pattern and shared
  by the encoder's and decoder's gradients.
- grad of the values through the decoder = (grad_out W_dec^T) at the pattern, O(nnz D); with
  the kernels it comes from the same pass over grad_out as grad W_dec.
- grad b_enc = the column sums of G; the encoder's part of grad b_dec is -W_enc colsum(G),
  one matrix-vector product instead of -sum_n G[n] W_enc^T.
- grad x (only when asked) = G W_enc^T, a gather-sum (embedding_bag).

Shapes: N tokens, M = d_sae latents, D = d_in or d_out. Works on CPU and CUDA.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from saescope import lowp, native

# ----- where the non-zeros are --------------------------------------------------------------


@dataclass(eq=False)
class Pattern:
    """Positions of the non-zeros of an (N, M) code matrix, CSR by row: row n holds the
    latents col[crow[n]:crow[n+1]], ascending."""

    crow: Tensor
    """(N + 1,) int64 row offsets."""
    col: Tensor
    """(nnz,) int64 latent of each non-zero."""
    m: int
    """Number of latents M."""

    @classmethod
    def fixed(cls, idx: Tensor, m: int) -> Pattern:
        """k latents per row: idx (N, k), ascending within each row."""
        n, k = idx.shape
        crow = torch.arange(n + 1, device=idx.device) * k
        return cls(crow, idx.reshape(-1), m)

    @classmethod
    def from_flat(cls, flat: Tensor, n: int, m: int) -> Pattern:
        """From ascending flat indices row * m + col into an (n, m) matrix."""
        rows = torch.div(flat, m, rounding_mode="floor")
        crow = torch.zeros(n + 1, dtype=torch.int64, device=flat.device)
        crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)
        p = cls(crow, flat - rows * m, m)
        p.__dict__["rows"] = rows  # seed the cache
        return p

    @property
    def n(self) -> int:
        return self.crow.shape[0] - 1

    @property
    def nnz(self) -> int:
        return self.col.shape[0]

    @property
    def density(self) -> float:
        """Fraction of the N x M entries in the pattern."""
        return self.nnz / max(self.n * self.m, 1)

    @cached_property
    def rows(self) -> Tensor:
        """(nnz,) token of each non-zero."""
        counts = self.crow.diff()
        return torch.repeat_interleave(torch.arange(self.n, device=self.col.device), counts)

    @cached_property
    def flat(self) -> Tensor:
        """(nnz,) flat index row * M + col."""
        return self.rows * self.m + self.col

    @cached_property
    def by_latent(self) -> tuple[Tensor, Tensor]:
        """(tcrow (M + 1,), order (nnz,)): the non-zeros sorted by latent, tokens ascending
        within a latent (a stable sort; int32 keys sort faster on CPU)."""
        keys = self.col.to(torch.int32) if self.m < 2**31 else self.col
        order = keys.argsort(stable=True)
        tcrow = torch.zeros(self.m + 1, dtype=torch.int64, device=self.col.device)
        tcrow[1:] = torch.bincount(self.col, minlength=self.m).cumsum(0)
        return tcrow, order

    def dense(self, vals: Tensor) -> Tensor:
        """The (N, M) matrix with vals (nnz,) at the pattern (differentiable in vals)."""
        out = vals.new_zeros(self.n * self.m)
        return out.index_put((self.flat,), vals).view(self.n, self.m)


# ----- sparse primitives --------------------------------------------------------------------


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR matrix, without torch's once-per-process "beta" warning (an error under
    pytest's filterwarnings=error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            crow, col, values, shape, dtype=values.dtype, check_invariants=False
        )


def _gather_sum(p: Pattern, w: Tensor, table: Tensor) -> Tensor:
    """out[n] = sum over row n's non-zeros j of w[j] table[col[j]]: (N, D)."""
    if p.nnz == 0:
        return table.new_zeros(p.n, table.shape[1])
    return F.embedding_bag(p.col, table, p.crow[:-1], mode="sum", per_sample_weights=w)


def _gather_dot(p: Pattern, y: Tensor, table: Tensor) -> Tensor:
    """out[j] = y[row[j]] . table[col[j]] for every non-zero j: (nnz,)."""
    if p.nnz == 0:
        return y.new_zeros(0)
    if native.usable(y, table):
        return native.pattern_dot(p.crow, p.col, y, table)
    pattern = _csr(p.crow, p.col, y.new_zeros(p.nnz), (p.n, p.m))
    return torch.sparse.sampled_addmm(pattern, y, table.t(), beta=0.0).values()


def _scatter_rows(p: Pattern, w: Tensor, y: Tensor) -> Tensor:
    """out[j] = sum over non-zeros (n, j) of w y[n], i.e. G^T y with G (N, M) holding w at
    the pattern. y (N, D) -> (M, D): a gather-sum over the by-latent order (the kernel, or
    embedding_bag, which beat a CSR (M, N) @ y by ~1.6x here)."""
    if p.nnz == 0:
        return y.new_zeros(p.m, y.shape[1])
    tcrow, order = p.by_latent
    if native.usable(w, y):
        return native.segment_sum(tcrow, order, p.rows, w, y)
    return F.embedding_bag(p.rows[order], y, tcrow[:-1], mode="sum", per_sample_weights=w[order])


# ----- choosers: which positions of pre each architecture keeps ------------------------------


class Chooser:
    """Picks the positions of pre (N, M) to keep. Runs without autograd. `__call__(pre)` may
    overwrite pre in place only when it is the last chooser of an `encode` call.

    `fused(raw, bias)`, where a chooser has it, works on the bias-free product raw = pre - bias
    and returns the positions with their values (pre there), or None to decline; `encode`
    uses it on the CPU when the compiled kernels (`saescope.native`) are there (a fused form
    declines any tensor they cannot take: on CUDA torch decides), which saves
    adding the bias to all N x M entries and one or two more passes over them."""

    def __call__(self, pre: Tensor) -> Pattern:
        raise NotImplementedError

    def fused(self, raw: Tensor, bias: Tensor) -> tuple[Pattern, Tensor] | None:
        return None


@dataclass(frozen=True)
class TopK(Chooser):
    """The k largest entries of each row."""

    k: int

    def __call__(self, pre: Tensor) -> Pattern:
        idx = pre.topk(self.k, dim=-1, sorted=False).indices.sort(dim=-1).values
        return Pattern.fixed(idx, pre.shape[1])

    def fused(self, raw: Tensor, bias: Tensor) -> tuple[Pattern, Tensor] | None:
        if not native.usable(raw, bias):  # the kernels are CPU-only: torch decides on CUDA
            return None
        out = native.topk_bias(raw, bias, self.k)
        if out is None:  # a NaN or an infinity: torch's top-k decides, as on the dense path
            return None
        idx, val = out
        return Pattern.fixed(idx, raw.shape[1]), val.view(-1)


@dataclass(frozen=True)
class BatchTopK(Chooser):
    """The n_keep largest entries of the whole batch.

    Exact, without a top-k over all N * M entries (~10x slower on CPU): every stride-th entry
    (a fixed sample, no RNG) estimates a cut a little below the n_keep-th largest value; the
    entries at or above it are the candidates, and their n_keep largest are the answer. When
    fewer than n_keep entries clear the cut (a sample far off), the whole batch is searched.
    """

    n_keep: int
    stride: int = 61
    margin: float = 1.5

    def _cut(self, sample: Tensor, total: int) -> Tensor | None:
        keep = min(self.n_keep, total)
        q = int(keep / self.stride * self.margin) + 16  # sample entries above the cut + slack
        return sample.topk(q, sorted=False).values.min() if q < sample.numel() else None

    def __call__(self, pre: Tensor) -> Pattern:
        n, m = pre.shape
        flat = pre.reshape(-1)
        keep = min(self.n_keep, n * m)
        cut = self._cut(flat[:: self.stride], n * m)
        if cut is not None:
            cand = (flat >= cut).nonzero().squeeze(1)
            if cand.numel() >= keep:  # so the n_keep-th largest value is >= cut: none missed
                top = flat[cand].topk(keep, sorted=False).indices
                return Pattern.from_flat(cand[top].sort().values, n, m)
        return Pattern.from_flat(flat.topk(keep, sorted=False).indices.sort().values, n, m)

    def fused(self, raw: Tensor, bias: Tensor) -> tuple[Pattern, Tensor] | None:
        if not native.usable(raw, bias):
            return None
        n, m = raw.shape
        keep = min(self.n_keep, n * m)
        if n >= 4 * self.stride:  # every stride-th row: contiguous reads, the same sample size
            sample = (raw[:: self.stride] + bias).view(-1)
        else:  # every stride-th entry (a gather that misses the cache at every entry)
            pos = torch.arange(0, n * m, self.stride)
            sample = raw.reshape(-1)[pos] + bias[pos % m]
        cut = self._cut(sample, n * m)
        if cut is None or not bool(torch.isfinite(cut)):
            return None
        crow, col, val = native.above_bias(raw, bias, float(cut), inclusive=True)
        if val.numel() < keep:
            return None
        top = val.topk(keep, sorted=False).indices.sort().values  # ascending flat order
        rows = torch.searchsorted(crow, top, right=True) - 1
        p = Pattern.from_flat(rows * m + col[top], n, m)
        return p, val[top]


@dataclass(frozen=True)
class Above(Chooser):
    """Entries strictly above the threshold, a scalar or one value per latent (M,)."""

    threshold: Tensor | float

    def __call__(self, pre: Tensor) -> Pattern:
        n, m = pre.shape
        flat = (pre > self.threshold).view(-1).nonzero().squeeze(1)
        return Pattern.from_flat(flat, n, m)

    def fused(self, raw: Tensor, bias: Tensor) -> tuple[Pattern, Tensor] | None:
        if not native.usable(raw, bias):
            return None
        crow, col, val = native.above_bias(raw, bias, self.threshold)
        return Pattern(crow, col, raw.shape[1]), val


@dataclass(frozen=True)
class AuxTopK(Chooser):
    """The k_aux largest entries of each row among the `dead` (M,) latents (AuxK). When at
    most half the latents are dead it searches their gathered columns; otherwise it masks
    pre in place, so it must be the last chooser."""

    dead: Tensor
    k_aux: int

    def __call__(self, pre: Tensor) -> Pattern:
        k = min(self.k_aux, int(self.dead.sum()))
        dead_idx = self.dead.nonzero().squeeze(1)
        if 2 * dead_idx.numel() <= pre.shape[1]:
            sub = pre.index_select(1, dead_idx)  # (N, n_dead)
            idx = dead_idx[sub.topk(k, dim=-1, sorted=False).indices]
        else:
            masked = pre.masked_fill_(~self.dead, float("-inf"))
            idx = masked.topk(k, dim=-1, sorted=False).indices
        return Pattern.fixed(idx.sort(dim=-1).values, pre.shape[1])


def topk(k: int) -> Chooser:
    return TopK(k)


def batch_topk(n_keep: int, stride: int = 61, margin: float = 1.5) -> Chooser:
    return BatchTopK(n_keep, stride, margin)


def above(threshold: Tensor | float) -> Chooser:
    return Above(threshold)


def aux_topk(dead: Tensor, k_aux: int) -> Chooser:
    return AuxTopK(dead, k_aux)


# ----- the pre-activation buffer -------------------------------------------------------------

_WORKSPACE: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}


def _pre_buffer(n: int, m: int, like: Tensor) -> Tensor | None:
    """A reused (n, m) buffer for pre on the CPU, where a fresh 100+ MB tensor each step
    costs ~15 % of the encoder product in page faults; None elsewhere (CUDA's allocator
    already reuses). One buffer per thread, device and dtype, replaced when the shape
    changes."""
    if like.device.type != "cpu":
        return None
    key = (threading.get_ident(), like.device, like.dtype)
    buf = _WORKSPACE.get(key)
    if buf is None or buf.shape != (n, m):
        _WORKSPACE.pop(key, None)
        buf = _WORKSPACE[key] = torch.empty(n, m, dtype=like.dtype)
    return buf


def release_buffers() -> None:
    """Free the reused pre-activation buffers (training calls it when it ends)."""
    _WORKSPACE.clear()


def _choose(
    xc: Tensor, W_enc: Tensor, b_enc: Tensor, choosers: Sequence[Chooser], low: bool = False
) -> list[tuple[Pattern, Tensor]]:
    """One encoder product, then each chooser's positions and the values of pre there. The
    bias joins the product only when a chooser cannot take it fused. low: the product in
    bfloat16 (`lowp.product`), the positions chosen on its values."""
    out = _pre_buffer(xc.shape[0], W_enc.shape[1], xc)
    fusing = native.usable(xc, W_enc, b_enc) and type(choosers[0]).fused is not Chooser.fused
    if low:
        pre = lowp.product(xc, W_enc, out=out)
        if not fusing:
            pre.add_(b_enc)
    elif not fusing:
        pre = torch.addmm(b_enc, xc, W_enc, out=out)
    else:
        pre = torch.mm(xc, W_enc, out=out)
    chosen: list[tuple[Pattern, Tensor]] = []
    biased = not fusing
    for choose in choosers:
        got = None if biased else choose.fused(pre, b_enc)
        if got is None:
            if not biased:
                pre.add_(b_enc)
                biased = True
            p = choose(pre)
            got = p, pre.view(-1)[p.flat] if p.nnz else pre.new_zeros(0)
        chosen.append(got)
    return chosen


# ----- autograd Functions -------------------------------------------------------------------


def _exact(p: Pattern, xc: Tensor, W_enc: Tensor, b_enc: Tensor) -> Tensor:
    """pre at the pattern's positions in float32, (nnz,): O(nnz D), about k / M of the
    encoder product's work."""
    return _gather_dot(p, xc, W_enc.t()) + b_enc[p.col]


class _Encode(torch.autograd.Function):
    """z at each chooser's positions, from one encoder product; saves the centred input
    (N, D), W_enc and the patterns. With a bfloat16 product (`low`) the positions are chosen
    on its values and z is computed again at them in float32."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        b_dec: Tensor | None,
        choosers: Sequence[Chooser],
        patterns_out: list[Pattern],
        low: bool = False,
    ) -> tuple[Tensor, ...]:
        xc = x if b_dec is None else x - b_dec
        zs = []
        for p, z in _choose(xc, W_enc, b_enc, choosers, low):
            zs.append(_exact(p, xc, W_enc, b_enc) if low else z)
            patterns_out.append(p)
        ctx.save_for_backward(xc, W_enc)
        ctx.patterns = list(patterns_out)  # type: ignore[attr-defined]
        ctx.set_materialize_grads(False)
        return tuple(zs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        xc, W_enc = ctx.saved_tensors
        need_x, need_W, need_b_enc, need_b_dec = ctx.needs_input_grad[:4]
        parts = [(p, g) for p, g in zip(ctx.patterns, grads, strict=True) if g is not None]
        parts = [(p, g) for p, g in parts if p.nnz]
        if not parts:
            return (None,) * 7
        grad_x = grad_W = grad_b_enc = grad_b_dec = None
        if need_W:
            acc = _scatter_rows(*parts[0], xc)
            for p, g in parts[1:]:
                acc += _scatter_rows(p, g, xc)
            grad_W = acc.t()  # (D, M), the layout of W_enc
        if need_b_enc or need_b_dec:
            col_sum = xc.new_zeros(W_enc.shape[1])
            for p, g in parts:
                col_sum.index_add_(0, p.col, g)
            grad_b_enc = col_sum if need_b_enc else None
            grad_b_dec = -(W_enc @ col_sum) if need_b_dec else None
        if need_x:
            W_t = W_enc.t().contiguous()  # free when W_enc is stored latent-major
            grad_x = _gather_sum(*parts[0], W_t)
            for p, g in parts[1:]:
                grad_x += _gather_sum(p, g, W_t)
        return grad_x, grad_W, grad_b_enc, grad_b_dec, None, None, None


class _Decode(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx, vals: Tensor, W_dec: Tensor, b_dec: Tensor | None, p: Pattern
    ) -> Tensor:
        out = _gather_sum(p, vals, W_dec)
        if b_dec is not None:
            out = out + b_dec
        ctx.save_for_backward(vals, W_dec)
        ctx.pattern = p  # type: ignore[attr-defined]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        vals, W_dec = ctx.saved_tensors
        p = ctx.pattern
        grad_out = grad_out.contiguous()
        need_vals, need_W, need_b = ctx.needs_input_grad[:3]
        if need_vals and need_W and p.nnz and native.usable(vals, grad_out, W_dec):
            tcrow, order = p.by_latent  # one pass over grad_out for both gradients
            grad_vals, grad_W = native.decode_backward(tcrow, order, p.rows, vals, grad_out, W_dec)
        else:
            grad_vals = _gather_dot(p, grad_out, W_dec) if need_vals else None
            grad_W = _scatter_rows(p, vals, grad_out) if need_W else None
        grad_b = grad_out.sum(0) if need_b else None
        return grad_vals, grad_W, grad_b, None


class _DecodeError(torch.autograd.Function):
    """(mean over tokens of |y_hat - y|^2, y_hat) with y_hat = f W_dec + b_dec: the decode and
    the SAE's MSE term in one pass over each token's row, and one pass for both decoder
    gradients in the backward. y_hat comes out without a gradient."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        vals: Tensor,
        W_dec: Tensor,
        b_dec: Tensor | None,
        y: Tensor,
        p: Pattern,
    ) -> tuple[Tensor, Tensor]:
        tensors = (vals, W_dec, y) if b_dec is None else (vals, W_dec, y, b_dec)
        if native.usable(*tensors):
            y_hat, e, sq = native.decode_error(p.crow, p.col, vals, W_dec, b_dec, y)
            loss = sq.sum()
        else:
            y_hat = _gather_sum(p, vals, W_dec)
            if b_dec is not None:
                y_hat = y_hat + b_dec
            e = y_hat - y
            loss = e.reshape(-1).dot(e.reshape(-1))
        ctx.save_for_backward(vals, W_dec, e)
        ctx.pattern = p  # type: ignore[attr-defined]
        ctx.mark_non_differentiable(y_hat)
        return loss / max(y.shape[0], 1), y_hat

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor, _g_y_hat: Tensor | None) -> tuple[Tensor | None, ...]:
        vals, W_dec, e = ctx.saved_tensors
        p = ctx.pattern
        need_vals, need_W, need_b, need_y = ctx.needs_input_grad[:4]
        scale = g * (2.0 / max(e.shape[0], 1))  # d loss / d y_hat = scale * e
        grad_vals = grad_W = None
        if need_vals and need_W and p.nnz and native.usable(vals, e, W_dec):
            tcrow, order = p.by_latent
            grad_vals, grad_W = native.decode_backward(
                tcrow, order, p.rows, vals, e, W_dec, float(scale)
            )
        elif need_vals or need_W:
            grad_out = e * scale
            grad_vals = _gather_dot(p, grad_out, W_dec) if need_vals else None
            grad_W = _scatter_rows(p, vals, grad_out) if need_W else None
        grad_b = e.sum(0) * scale if need_b else None
        grad_y = e * -scale if need_y else None
        return grad_vals, grad_W, grad_b, grad_y, None


# ----- public API ---------------------------------------------------------------------------


def encode(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    b_dec: Tensor | None,
    choosers: Sequence[Chooser],
    low: bool = False,
) -> list[tuple[Pattern, Tensor]]:
    """pre = (x - b_dec) W_enc + b_enc (no centring when b_dec is None), then for each
    chooser its positions and the pre-activations z (nnz,) there.

    x (N, D), W_enc (D, M), b_enc (M,). Gradients of z reach x, W_enc, b_enc and b_dec with
    the same values as dense autograd through pre; the backward keeps no N x M tensor.
    low: the product in bfloat16 (`lowp.product`); the positions are chosen on its values
    (ties and near-ties may pick other latents than float32 would), z is float32 there.
    """
    patterns: list[Pattern] = []
    zs = _Encode.apply(x, W_enc, b_enc, b_dec, tuple(choosers), patterns, low)
    return list(zip(patterns, zs, strict=True))


def decode(p: Pattern, vals: Tensor, W_dec: Tensor, b_dec: Tensor | None) -> Tensor:
    """f @ W_dec + b_dec for f given as (pattern, vals); b_dec None decodes without bias
    (AuxK). Gradients reach vals, W_dec and b_dec, each in O(nnz D)."""
    return _Decode.apply(vals, W_dec, b_dec, p)


def decode_error(
    p: Pattern, vals: Tensor, W_dec: Tensor, b_dec: Tensor | None, y: Tensor
) -> tuple[Tensor, Tensor]:
    """(y_hat, mse): y_hat = f W_dec + b_dec for f given as (pattern, vals), without a
    gradient, and the SAE's MSE term, mean over tokens of |y_hat - y|^2, whose gradients
    reach vals, W_dec, b_dec and y. Equal to decode + SAE.mse, in fewer passes."""
    mse, y_hat = _DecodeError.apply(vals, W_dec, b_dec, y.reshape(p.n, W_dec.shape[1]), p)
    return y_hat, mse


@dataclass(frozen=True)
class SparseCodes:
    """Codes of a batch in sparse form: values (nnz,) at a pattern."""

    pattern: Pattern
    vals: Tensor

    def dense(self) -> Tensor:
        return self.pattern.dense(self.vals)

    def l0(self) -> float:
        """Mean number of non-zero codes per token."""
        return float((self.vals != 0).sum()) / max(self.pattern.n, 1)

    def fired(self) -> Tensor:
        """(M,) bool: latents with a non-zero code in the batch."""
        out = torch.zeros(self.pattern.m, dtype=torch.bool, device=self.vals.device)
        return out.index_fill_(0, self.pattern.col[self.vals != 0], True)

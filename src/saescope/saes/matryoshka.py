"""Matryoshka BatchTopK SAE (Bussmann, Nabeshima, Karvonen, Nanda 2025, arXiv 2503.17547;
Nabeshima 2024, "Matryoshka Sparse Autoencoders").

The latents form nested prefixes: the first m_1 < m_2 < ... < m_G = d_sae latents. One
BatchTopK encoding (the N*k largest ReLU'd pre-activations of the batch, as `batchtopk.py`) is
decoded G times, prefix g with b_dec + f[:, :m_g] W_dec[:m_g], and every prefix is trained to
reconstruct: the `mse` term is a weighted sum of each prefix's squared error, so the early
latents must carry the general features on their own and a later latent cannot absorb its
parent's direction. The weights (`prefix_weights`) are by default proportional to m_g^2 (the
whole dictionary's loss weighs most; with prefixes d_sae/8, /4, /2, d_sae: 1, 4, 16, 64 over
85): with dictionary_learning's uniform 1/G, prefixes smaller than the number of features
learn blends on a task without hierarchy, and "uniform" keeps that weighting (files saved
before the field existed were trained with it and load with it). docs/RESULTS.md (issue 18)
has the measurements. The reconstruction is the full prefix's; AuxK on its residual as for TopK.
Inference is a JumpReLU at one threshold, estimated as BatchTopK's is.

`group_sizes` are the sizes of the groups the prefixes add (they sum to d_sae), as
dictionary_learning's `MatryoshkaBatchTopKSAE(group_sizes=...)` stores them; `prefixes` are
their running sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise
from typing import Any, ClassVar, final

import torch
from torch import Tensor

from saescope import ops, sparse
from saescope.errors import ConfigError
from saescope.saes.auxk import AuxKConfig, auxk_loss, fvu
from saescope.saes.base import SAE, LossContext, LossOutput
from saescope.saes.batchtopk import (
    CutAcross,
    batch_topk_activation,
    encode_at_threshold,
    settle_threshold,
    smallest_kept,
    update_threshold,
)
from saescope.sparse import Pattern, SparseCodes


def default_group_sizes(d_sae: int) -> tuple[int, ...]:
    """Groups whose prefixes are d_sae/8, d_sae/4, d_sae/2 and d_sae (fewer, each at least
    one latent, when d_sae is small)."""
    prefixes = sorted({max(1, d_sae // 2**j) for j in (3, 2, 1, 0)})
    return tuple(b - a for a, b in zip([0, *prefixes], prefixes, strict=False))


PREFIX_WEIGHTS = ("squared", "uniform")


def _int_tuple(value: Any) -> tuple[int, ...]:
    """A tuple of ints from a tuple, a list (JSON) or "a,b,c" (the command line)."""
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"group_sizes must be whole numbers like 64,64,128, got {value!r}"
        ) from None
    if any(o != v for o, v in zip(out, value, strict=True) if not isinstance(v, str)):
        raise ConfigError(f"group_sizes must be whole numbers, got {value!r}")
    return out


@dataclass(frozen=True)
class MatryoshkaConfig(AuxKConfig):
    name: ClassVar[str] = "matryoshka"
    saved_before: ClassVar[dict[str, Any]] = {"prefix_weights": "uniform"}

    k: float = 32
    """Mean active latents per token over a batch."""
    group_sizes: tuple[int, ...] | None = None
    """Sizes of the nested groups, summing to d_sae (e.g. 64,64,128,256): prefix g is the
    first group_sizes[0] + ... + group_sizes[g] latents; default: prefixes d_sae/8, d_sae/4,
    d_sae/2, d_sae."""
    prefix_weights: str = "squared"
    """How each prefix's squared error is weighted in the loss: "squared" (proportional to the
    prefix's size squared, summing to 1) or "uniform" (1/G each, dictionary_learning's default
    and saescope's before issue 18)."""
    threshold_rate: float = 0.01
    """Rate of the running average of the inference threshold during training (the final
    threshold is measured again with the final weights)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.k, bool) or not 0 < self.k <= self.d_sae:
            raise ConfigError(f"k must be in (0, d_sae={self.d_sae}], got {self.k}")
        if not 0 < self.threshold_rate <= 1:
            raise ConfigError(f"threshold_rate must be in (0, 1], got {self.threshold_rate}")
        sizes = (
            default_group_sizes(self.d_sae)
            if self.group_sizes is None
            else _int_tuple(self.group_sizes)
        )
        if not sizes or min(sizes) < 1 or sum(sizes) != self.d_sae:
            raise ConfigError(
                f"group_sizes must be positive and sum to d_sae={self.d_sae}, got "
                f"{list(sizes)} (sum {sum(sizes)}); give e.g. "
                f"{','.join(map(str, default_group_sizes(self.d_sae)))}"
            )
        object.__setattr__(self, "group_sizes", sizes)
        if self.prefix_weights not in PREFIX_WEIGHTS:
            raise ConfigError(
                f"prefix_weights must be one of {', '.join(PREFIX_WEIGHTS)}, got "
                f"{self.prefix_weights!r}"
            )

    @property
    def weights(self) -> tuple[float, ...]:
        """Each prefix's weight in the mse term (they sum to 1)."""
        sizes = self.prefixes
        raw = [1.0] * len(sizes) if self.prefix_weights == "uniform" else [m * m for m in sizes]
        return tuple(w / sum(raw) for w in raw)

    @property
    def prefixes(self) -> tuple[int, ...]:
        """The nested prefix sizes m_1 < ... < m_G = d_sae."""
        return tuple(accumulate(self.group_sizes or ()))


@final
class MatryoshkaSAE(SAE):
    config_cls = MatryoshkaConfig
    cfg: MatryoshkaConfig

    def _extra_params(self) -> None:
        # (d_sae,) all equal, as BatchTopK's; -1 until training has estimated it.
        self.register_buffer("threshold", torch.full((self.cfg.d_sae,), -1.0))

    def _encode(self, x: Tensor) -> Tensor:
        return encode_at_threshold(self.pre_acts(x), self.cfg.k, self.threshold, self.training)

    def _loss(self, x: Tensor, y: Tensor, ctx: LossContext | None = None) -> LossOutput:
        ctx = ctx or LossContext()
        x = self._flat(x)
        if self.use_sparse(self.cfg.k / self.cfg.d_sae):
            return self._sparse_loss(x, y, ctx)
        pre = self.pre_acts(x)
        f, min_kept = batch_topk_activation(pre, self.cfg.k, ctx.across)
        y_hat, mses = self._prefix_errors(f, y)
        aux = self.cfg.aux_coef * auxk_loss(self, pre, y, y_hat, ctx)
        return self._output(y_hat, f, mses, aux, min_kept)

    def _prefix_errors(self, f: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(the full prefix's reconstruction (N, d_out), each prefix's squared error): each
        group decoded once and added to the previous prefix's decode, so the work is one
        decode's, not G."""
        bounds = (0, *self.cfg.prefixes)
        y_hat, mses = self.b_dec, []
        for a, b in pairwise(bounds):
            y_hat = y_hat + f[:, a:b] @ self.W_dec[a:b]
            mses.append(self.mse(y, y_hat))
        return y_hat, mses  # type: ignore[return-value]

    def _sparse_loss(self, x: Tensor, y: Tensor, ctx: LossContext) -> LossOutput:
        """The same values and gradients on the sparse path: prefix g decodes the codes of
        latents below m_g, the first entries of each row of the pattern."""
        across = ctx.across  # rows spread over processes: the whole batch's N*k
        rows = x.shape[0] if across is None else across.rows
        n_keep = ops.batch_topk_count(self.cfg.k, rows, self.cfg.d_sae)
        dead = ctx.dead
        use_aux = dead is not None and bool(dead.any())
        choosers = [sparse.batch_topk(n_keep) if across is None else CutAcross(n_keep, across)]
        if use_aux:
            choosers.append(sparse.aux_topk(dead, self.cfg.k_aux))  # type: ignore[arg-type]
        coded = self.sparse_encode(x, choosers)
        p, z = coded[0]
        vals = z.relu()
        mses = []
        for m in self.cfg.prefixes[:-1]:
            sub, keep = prefix_pattern(p, m)
            mses.append(sparse.decode_error(sub, vals[keep], self.W_dec, self.b_dec, y)[1])
        y_hat, mse = sparse.decode_error(p, vals, self.W_dec, self.b_dec, y)
        mses.append(mse)
        aux = y_hat.new_zeros(())
        if use_aux:
            aux_p, aux_z = coded[1]
            e = (y - y_hat).detach()
            aux = fvu(e - sparse.decode(aux_p, aux_z.relu(), self.W_dec, None), e, across)
        codes = SparseCodes(p, vals.detach())
        min_kept = smallest_kept(codes.vals, across)
        return self._output(y_hat, None, mses, self.cfg.aux_coef * aux, min_kept, codes)

    def _output(
        self,
        y_hat: Tensor,
        f: Tensor | None,
        mses: list[Tensor],
        aux: Tensor,
        min_kept: Tensor,
        codes: SparseCodes | None = None,
    ) -> LossOutput:
        prefix_mse = torch.stack([m.detach() for m in mses])
        mse = sum(w * m for w, m in zip(self.cfg.weights, mses, strict=True))
        terms = {"mse": mse, "auxk": aux}
        extras = {"min_kept": min_kept, "prefix_mse": prefix_mse}
        return LossOutput(y_hat, f, terms, extras, codes)  # type: ignore[arg-type]

    def after_step(self, out: LossOutput) -> None:
        """theta <- theta + rate (min_kept - theta); the first batch sets it outright."""
        update_threshold(self.threshold, out.extras["min_kept"], self.cfg.threshold_rate)

    def finish_training(self, xs: Sequence[Tensor]) -> dict[str, Any]:
        """theta measured again with the final weights on the last training batches, as
        BatchTopK's (`batchtopk.settle_threshold`)."""
        return settle_threshold(self, self.threshold, self.cfg.k, xs)


def prefix_pattern(p: Pattern, m: int) -> tuple[Pattern, Tensor]:
    """The part of p on latents below m, and the mask (nnz,) of p's entries it keeps. Each
    row's latents ascend, so they are its first entries; O(nnz)."""
    keep = p.col < m
    before = torch.zeros(p.nnz + 1, dtype=torch.int64, device=p.col.device)
    before[1:] = keep.cumsum(0)
    return Pattern(before[p.crow], p.col[keep], p.m), keep

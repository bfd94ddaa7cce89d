"""BatchTopK SAE (Bussmann, Leask, Nanda 2024, arXiv 2412.06410).

Training keeps the N*k largest ReLU'd pre-activations of the whole batch, so k is an average
per token. Inference is a JumpReLU with one global threshold theta, the smallest activation
batch top-k keeps, averaged over batches. During training theta is a running average
(`after_step`); it lags the weights, by about 1 / threshold_rate steps, while the kept minimum
drifts (it fell from 1.63 to 0.57 over a 200-step run at k=32, leaving the average at 0.88 and
eval-mode L0 at 12). So at the end (`finish_training`) theta is measured again with the final
weights on the last training batches. AuxK as for TopK (`auxk.py`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, final

import torch
from torch import Tensor

from saescope import ops, sparse
from saescope.errors import ConfigError
from saescope.saes.auxk import AuxKConfig, auxk_loss, sparse_topk_loss
from saescope.saes.base import SAE, LossContext, LossOutput
from saescope.saes.loss import Across

SETTLED_TOKENS = 2048
"""Fewest tokens the final threshold is measured on for it to be trusted (else a warning)."""


class ThresholdWarning(UserWarning):
    """BatchTopK's inference threshold rests on too little data: eval-mode L0 may miss k."""


@dataclass(frozen=True)
class BatchTopKConfig(AuxKConfig):
    name: ClassVar[str] = "batchtopk"

    k: float = 32
    """Mean active latents per token over a batch."""
    threshold_rate: float = 0.01
    """Rate of the running average of the inference threshold during training (the final
    threshold is measured again with the final weights)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.k, bool) or not 0 < self.k <= self.d_sae:
            raise ConfigError(f"k must be in (0, d_sae={self.d_sae}], got {self.k}")
        if not 0 < self.threshold_rate <= 1:
            raise ConfigError(f"threshold_rate must be in (0, 1], got {self.threshold_rate}")


@final
class BatchTopKSAE(SAE):
    config_cls = BatchTopKConfig
    cfg: BatchTopKConfig

    def _extra_params(self) -> None:
        # (d_sae,) all equal; -1 until training has estimated it.
        self.register_buffer("threshold", torch.full((self.cfg.d_sae,), -1.0))

    def _encode(self, x: Tensor) -> Tensor:
        return encode_at_threshold(self.pre_acts(x), self.cfg.k, self.threshold, self.training)

    def _loss(self, x: Tensor, y: Tensor, ctx: LossContext | None = None) -> LossOutput:
        ctx = ctx or LossContext()
        x, across = self._flat(x), ctx.across
        if self.use_sparse(self.cfg.k / self.cfg.d_sae):
            rows = x.shape[0] if across is None else across.rows
            n_keep = ops.batch_topk_count(self.cfg.k, rows, self.cfg.d_sae)
            chooser = sparse.batch_topk(n_keep) if across is None else CutAcross(n_keep, across)
            y_hat, mse, codes, aux = sparse_topk_loss(self, x, y, ctx, chooser)
            terms = {"mse": mse, "auxk": self.cfg.aux_coef * aux}
            min_kept = smallest_kept(codes.vals, across)
            return LossOutput(y_hat, None, terms, {"min_kept": min_kept}, codes)
        pre = self.pre_acts(x)
        f, min_kept = batch_topk_activation(pre, self.cfg.k, across)
        y_hat = self.decode(f)
        aux = self.cfg.aux_coef * auxk_loss(self, pre, y, y_hat, ctx)
        return LossOutput(
            y_hat, f, {"mse": self.mse(y, y_hat), "auxk": aux}, {"min_kept": min_kept}
        )

    def after_step(self, out: LossOutput) -> None:
        """theta <- theta + rate (min_kept - theta); the first batch sets it outright."""
        update_threshold(self.threshold, out.extras["min_kept"], self.cfg.threshold_rate)

    def finish_training(self, xs: Sequence[Tensor]) -> dict[str, Any]:
        """theta <- the smallest activation batch top-k keeps in each of the last training
        batches xs, with the final weights, averaged (weighted by tokens): what the running
        average estimates, without its lag. Warns (`ThresholdWarning`) when fewer than
        SETTLED_TOKENS tokens had a positive kept activation."""
        return settle_threshold(self, self.threshold, self.cfg.k, xs)


# ----- batch top-k over a batch spread across processes (data parallel) ----------------------


def batch_topk_activation(pre: Tensor, k: float, across: Across | None) -> tuple[Tensor, Tensor]:
    """`ops.batch_topk_activation`; with `across`, over the whole batch: this process keeps
    its entries at or above the whole batch's N*k-th largest ReLU'd value (from every
    process's N*k largest), the positive ones (a kept zero changes nothing)."""
    if across is None:
        return ops.batch_topk_activation(pre, k)
    n_keep = ops.batch_topk_count(k, across.rows, pre.shape[1])
    flat = pre.relu().flatten()
    values = flat.detach()
    cut = across.kth_largest(values.topk(min(n_keep, values.numel()), sorted=False).values, n_keep)
    keep = (values >= cut) & (values > 0)
    return (flat * keep).view_as(pre), smallest_kept(values[keep], across)


def smallest_kept(vals: Tensor, across: Across | None) -> Tensor:
    """`ops.smallest_positive` of the kept values, over every process with `across`."""
    if across is None:
        return ops.smallest_positive(vals)
    positive = vals[vals > 0]
    here = positive.min() if positive.numel() else vals.new_full((), float("inf"))
    least = across.min(here.reshape(1))[0]
    return least if bool(torch.isfinite(least)) else vals.new_zeros(())


@dataclass(frozen=True)
class CutAcross(sparse.Chooser):
    """The sparse path's batch top-k over a batch spread across processes: the entries at
    or above the whole batch's n_keep-th largest value, the positive ones."""

    n_keep: int
    across: Across = field(compare=False)

    def __call__(self, pre: Tensor) -> sparse.Pattern:
        n, m = pre.shape
        flat = pre.reshape(-1)
        cand = flat.topk(min(self.n_keep, flat.numel()), sorted=False).values
        cut = self.across.kth_largest(cand, self.n_keep)
        chosen = ((flat >= cut) & (flat > 0)).nonzero().squeeze(1)
        return sparse.Pattern.from_flat(chosen, n, m)


# ----- the inference threshold, shared with the Matryoshka BatchTopK SAE ----------------------


@torch.no_grad()
def encode_at_threshold(pre: Tensor, k: float, threshold: Tensor, training: bool) -> Tensor:
    """Codes from pre-activations (N, d_sae): the batch's N*k largest while training or before
    a threshold was estimated (-1), else a JumpReLU at the threshold (> 0 implies ReLU)."""
    if training or bool((threshold < 0).any()):
        return ops.batch_topk_activation(pre, k)[0]
    return pre * (pre > threshold)


def update_threshold(threshold: Tensor, min_kept: Tensor, rate: float) -> None:
    """The running average of the kept minimum: theta <- theta + rate (m - theta); the first
    positive m sets it outright (theta < 0 means not yet estimated)."""
    m = min_kept
    if m <= 0:
        return
    if bool((threshold < 0).any()):
        threshold.fill_(float(m))
    else:
        threshold.add_(rate * (m - threshold))


def settle_threshold(sae: SAE, threshold: Tensor, k: float, xs: Sequence[Tensor]) -> dict[str, Any]:
    """threshold <- the token-weighted mean over xs of the smallest activation batch top-k
    keeps with sae's current weights; warns below SETTLED_TOKENS tokens. Returns the final
    metrics' threshold fields."""
    running = float(threshold[0])
    with torch.no_grad():
        kept = [(x.shape[0], min_kept(sae, x, k)) for x in xs]
    return threshold_from_kept(threshold, kept, running, sae.cfg.name, k)


def threshold_from_kept(
    threshold: Tensor, kept: list[tuple[int, float]], running: float, name: str, k: float
) -> dict[str, Any]:
    """threshold <- the token-weighted mean of the (tokens, smallest kept activation) pairs
    with a positive minimum; warns below SETTLED_TOKENS tokens (at the finishing call's
    caller). Returns the final metrics' threshold fields."""
    kept = [(n, m) for n, m in kept if m > 0]
    tokens = sum(n for n, _ in kept)
    if tokens:
        threshold.fill_(sum(n * m for n, m in kept) / tokens)
    settled = tokens >= SETTLED_TOKENS
    if not settled:
        warnings.warn(
            f"{name}'s inference threshold rests on {tokens} tokens (fewer than "
            f"{SETTLED_TOKENS}): eval-mode L0 may differ from k={k}. Train on "
            "more tokens (more steps or bigger batches)",
            ThresholdWarning,
            stacklevel=4,
        )
    return {
        "threshold": float(threshold[0]),
        "threshold_running": running,
        "threshold_tokens": tokens,
        "threshold_settled": settled,
    }


def min_kept(sae: SAE, x: Tensor, k: float) -> float:
    """The smallest positive activation batch top-k keeps in the batch x (0 if none)."""
    pre = sae.pre_acts(x)  # (N, d_sae)
    n_keep = ops.batch_topk_count(k, pre.shape[0], pre.shape[1])
    chosen = sparse.batch_topk(n_keep)(pre)
    return float(ops.smallest_positive(pre.reshape(-1)[chosen.flat]))

"""Feature effects, the numbers a researcher asks for before steering: each feature's direct
logit effect (its decoder direction through the final norm's scale and the unembedding), and
the change in next-token loss when a feature is zeroed (`ablate`). Attribution to a logit is
in `attribution.py`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saescope.data.outliers import OutlierRule
from saescope.errors import InputError
from saescope.models.downstream import batch_size_for, check_batch_size
from saescope.models.downstream import model_logits as downstream_logits
from saescope.models.lm import unembedding
from saescope.saes import SAE
from saescope.steer.edits import Edit
from saescope.steer.intervene import FeatureEdits, steering


@dataclass(frozen=True)
class LogitEffect:
    """A feature's direct effect on the logits: the tokens it promotes most (`top`) and
    suppresses most (`bottom`), as (token id, logit change per unit of activation)."""

    feature: int
    top: list[tuple[int, float]]
    bottom: list[tuple[int, float]]


def direct_logits(sae: SAE, model: nn.Module, features: Sequence[int] | None = None) -> Tensor:
    """(len(features), vocab): each feature's decoder row through the final norm's scale and
    the unembedding (every feature when features is None)."""
    gamma, w_u = unembedding(model)
    ids = list(range(sae.cfg.d_sae)) if features is None else list(features)
    for i in ids:
        Edit(i).check(sae.cfg.d_sae)
    rows = sae.W_dec.detach()[ids]
    if rows.shape[1] != gamma.shape[0]:
        raise InputError(
            f"the SAE writes d_out {rows.shape[1]} but the model's residual stream has "
            f"width {gamma.shape[0]}; direct logit effects need an SAE on the residual stream"
        )
    return (rows * gamma.to(rows)) @ w_u.to(rows)


def logit_effects(
    sae: SAE, model: nn.Module, features: Sequence[int], k: int = 10
) -> list[LogitEffect]:
    """The top and bottom k tokens of each feature's direct logit effect."""
    out = []
    logits = direct_logits(sae, model, features)
    for i, row in zip(features, logits, strict=True):
        top = torch.topk(row, min(k, row.numel()))
        low = torch.topk(-row, min(k, row.numel()))
        out.append(
            LogitEffect(
                int(i),
                [(int(t), float(v)) for v, t in zip(top.values, top.indices, strict=True)],
                [(int(t), -float(v)) for v, t in zip(low.values, low.indices, strict=True)],
            )
        )
    return out


@dataclass(frozen=True)
class Ablation:
    """What zeroing each feature does to next-token loss: `deltas` (n_features, B), per context
    the mean next-token cross-entropy (nats) with the feature zeroed minus the clean one; `mean`
    (n_features,) their average over contexts; `clean` (B,) the clean per-context loss."""

    features: list[int]
    deltas: Tensor
    mean: Tensor
    clean: Tensor


def _context_ce(logits: Tensor, ids: Tensor, mask: Tensor | None, start: int) -> Tensor:
    """(B,) mean next-token cross-entropy of each context, over the predictions from position
    `start` on whose token and target are both real (mask (B, T), 1 for real tokens)."""
    logp = F.log_softmax(logits[:, start:-1].float(), -1)
    targets = ids[:, start + 1 :]
    ce = -logp.gather(-1, targets[..., None])[..., 0]  # (B, T - 1 - start)
    real = torch.ones_like(ce) if mask is None else (mask[:, start:-1] * mask[:, start + 1 :])
    real = real.to(ce)
    return (ce * real).sum(1) / real.sum(1).clamp_min(1)


@torch.no_grad()
def ablate(
    sae: SAE,
    model: nn.Module,
    hook: str,
    ids: Tensor,
    features: Sequence[int],
    outliers: OutlierRule | None = None,
    attention_mask: Tensor | None = None,
    keep_first: bool = True,
    batch_size: int | None = None,
) -> Ablation:
    """The change in next-token loss on contexts ids (B, T) (right-padded where
    attention_mask (B, T) is 0) when each feature is zeroed at hook `hook` at every position
    (`FeatureEdits` with `Edit(i, mode="zero")`: x - f_i W_dec[i], the error term kept; rows
    beyond the run's `outliers` rule and, with keep_first, position 0 left alone, whose
    prediction is then not scored). One clean pass per batch of contexts (`batch_size`, by
    default as many as keep one pass's logits within `downstream.LOGITS_BUDGET`), then one
    pass per feature."""
    ids = torch.as_tensor(ids)
    need = 3 if keep_first else 2  # a scored prediction
    if ids.dim() != 2 or ids.shape[1] < need:
        raise InputError(
            f"ids must be (contexts, positions) with at least {need} positions, got "
            f"shape {tuple(ids.shape)}"
        )
    check_batch_size(batch_size)
    edits = [
        FeatureEdits(
            hook,
            sae=sae,
            edits=[Edit(int(i), mode="zero")],
            outliers=outliers,
            keep_first=keep_first,
        )
        for i in features
    ]
    start = 1 if keep_first else 0
    if batch_size is None:
        vocab = downstream_logits(model, ids[:1, :2]).shape[-1]
        batch_size = batch_size_for(ids.shape[1], vocab)
    clean, deltas = [], []
    for b in range(0, ids.shape[0], batch_size):
        part = ids[b : b + batch_size]
        mask = None if attention_mask is None else attention_mask[b : b + batch_size]
        base = _context_ce(downstream_logits(model, part), part, mask, start)
        rows = []
        for edit in edits:
            with steering(model, [edit], attention_mask=mask):
                rows.append(_context_ce(downstream_logits(model, part), part, mask, start) - base)
        clean.append(base)
        deltas.append(torch.stack(rows) if rows else base.new_zeros(0, part.shape[0]))
    d = torch.cat(deltas, 1)
    return Ablation([int(i) for i in features], d, d.mean(1), torch.cat(clean))

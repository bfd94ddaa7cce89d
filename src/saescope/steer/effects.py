"""Feature effects, the numbers a researcher asks for before steering: each feature's direct
logit effect (its decoder direction through the final norm's scale and the unembedding)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saescope.errors import InputError
from saescope.models.lm import unembedding
from saescope.saes import SAE
from saescope.steer.edits import Edit


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

"""Which features fire on each token of a text: one forward pass of the model to the SAE's hook
(an observer, the pass stopped there, as harvest does), each position encoded by the SAE, and
per token its `top` most active features. What `saescope explore`'s prompt view shows.

Position 0 and outlier tokens (beyond the run's `OutlierRule`) are reported but not encoded:
the SAE never trained on them (harvest drops position 0; training sets outliers aside).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from saescope.data.outliers import OutlierRule
from saescope.errors import ConfigError, InputError
from saescope.models import max_context
from saescope.models.harvest import Harvester
from saescope.saes import SAE

MAX_TOKENS = 1024
"""The longest text taken when the model does not say its context."""


def text_ids(tokenizer: Any, model: nn.Module, text: str, limit: int | None = None) -> list[int]:
    """The text's token ids, checked: not empty, within `limit` tokens (default: the model's
    context, else MAX_TOKENS)."""
    if not text.strip():
        raise InputError("the text is empty; type some text")
    ids = list(tokenizer.encode(text))
    limit = limit or max_context(model) or MAX_TOKENS
    if not ids:
        raise InputError("the text gives no tokens; type some text")
    if len(ids) > limit:
        raise InputError(
            f"the text has {len(ids)} tokens, more than the {limit} taken (the model's "
            "context); shorten it"
        )
    return ids


def token_activations(
    sae: SAE,
    model: nn.Module,
    tokenizer: Any,
    hook: str,
    text: str,
    top: int = 5,
    outliers: OutlierRule | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """The features firing on each token of `text`, as JSON values:
    {"tokens": [{"token": str, "skipped": None | "first" | "outlier",
                 "features": [{"feature": int, "act": float}]}]  (most active first, at most
     `top`, only those that fire), "features": [{"feature", "max", "count"}] (every feature
     that fired on some token: its largest activation and on how many tokens; largest first),
     "max": the largest activation of all (0 when none fired)}."""
    if top < 1:
        raise ConfigError(f"top must be at least 1, got {top}")
    ids, skipped, f = encode_text(sae, model, tokenizer, hook, text, outliers, limit)
    rows: list[dict[str, Any]] = []
    codes = iter(f)
    for pos, token in enumerate(ids):
        fired: list[dict[str, Any]] = []
        if skipped[pos] is None:
            row = next(codes)
            vals, idx = torch.topk(row, min(top, row.numel()))
            fired = [
                {"feature": int(i), "act": float(v)}
                for v, i in zip(vals, idx, strict=True)
                if v > 0
            ]
        rows.append(
            {"token": tokenizer.decode([token]), "skipped": skipped[pos], "features": fired}
        )
    return {"tokens": rows, "features": _summary(f), "max": float(f.max()) if f.numel() else 0.0}


def encode_text(
    sae: SAE,
    model: nn.Module,
    tokenizer: Any,
    hook: str,
    text: str,
    outliers: OutlierRule | None = None,
    limit: int | None = None,
) -> tuple[list[int], list[str | None], torch.Tensor]:
    """The text's token ids, why each position was not encoded (None, "first" or "outlier")
    and the SAE's codes (float32, on the CPU) of the encoded positions, in order."""
    ids = text_ids(tokenizer, model, text, limit)
    x = Harvester(model, [hook])(torch.tensor([ids]))[hook][0]  # (T, d)
    if x.shape[1] != sae.cfg.d_in:
        raise InputError(
            f"the SAE takes d_in {sae.cfg.d_in} but hook {hook} has width {x.shape[1]}; "
            "give the hook the SAE was trained on"
        )
    far = ~outliers.keep(x, x).cpu() if outliers is not None else torch.zeros(len(ids), dtype=bool)
    skipped = [
        "first" if pos == 0 else ("outlier" if bool(far[pos]) else None) for pos in range(len(ids))
    ]
    keep = torch.tensor([s is None for s in skipped])
    w = sae.W_dec
    with torch.no_grad():
        f = sae.encode(x[keep].to(w.device, w.dtype)).float().cpu()
    return ids, skipped, f


def activation_matrix(
    sae: SAE,
    model: nn.Module,
    tokenizer: Any,
    hook: str,
    text: str,
    columns: int = 32,
    outliers: OutlierRule | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """A dense tokens x features matrix of the `columns` features most active on `text` (by
    their largest activation; ordered by the first token where each peaks), as JSON values:
    {"tokens": [{"token", "skipped"}], "features": [{"feature", "max", "count"}],
     "acts": [[float]] (one row per token, one column per feature; 0 where the feature is
     silent and on skipped tokens), "max": the largest activation (0 when none fired)}.
    What the Sparsity Explorer of `saescope explore` draws for a language model."""
    if columns < 1:
        raise ConfigError(f"columns must be at least 1, got {columns}")
    ids, skipped, f = encode_text(sae, model, tokenizer, hook, text, outliers, limit)
    chosen = _summary(f)[:columns]
    cols = torch.tensor([c["feature"] for c in chosen], dtype=torch.long)
    dense = torch.zeros(len(ids), len(chosen))
    keep = torch.tensor([s is None for s in skipped])
    if len(chosen):
        dense[keep] = f[:, cols]
        order = sorted(range(len(chosen)), key=lambda j: (int(dense[:, j].argmax()), j))
        chosen, dense = [chosen[j] for j in order], dense[:, order]
    tokens = [
        {"token": tokenizer.decode([t]), "skipped": s} for t, s in zip(ids, skipped, strict=True)
    ]
    return {
        "tokens": tokens,
        "features": chosen,
        "acts": dense.tolist(),
        "max": float(dense.max()) if dense.numel() else 0.0,
    }


def _summary(f: torch.Tensor) -> list[dict[str, Any]]:
    """Every feature that fired on some row of f (T, d_sae): its max and count, by max."""
    if f.shape[0] == 0:
        return []
    count = (f > 0).sum(0)
    peak = f.max(0).values
    alive = (count > 0).nonzero().flatten()
    order = alive[torch.argsort(peak[alive], descending=True, stable=True)]
    return [{"feature": int(i), "max": float(peak[i]), "count": int(count[i])} for i in order]

"""Evaluate a trained SAE on held-out batches: the core metrics, in one dict."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from saescope import metrics
from saescope.errors import InputError
from saescope.saes import SAE


@torch.no_grad()
def evaluate(
    sae: SAE,
    batches: Iterable[tuple[Tensor, Tensor]],
    max_tokens: int = 65_536,
    features: Tensor | None = None,
) -> dict[str, Any]:
    """Metrics over up to `max_tokens` tokens of (x, y) batches, with the SAE in eval mode.

    features: true feature directions (G, d_out) when the data has a ground truth; adds
    `mmcs` and `min_feature_cosine` (best-match cosine of the worst-recovered true feature).
    """
    was_training = sae.training
    sae.eval()
    ys, y_hats, fs = [], [], []
    n = 0
    for x, y in batches:
        if x.shape[-1] != sae.cfg.d_in or y.shape[-1] != sae.cfg.d_out:
            raise InputError(
                f"data has d_in={x.shape[-1]}, d_out={y.shape[-1]} but the SAE expects "
                f"d_in={sae.cfg.d_in}, d_out={sae.cfg.d_out}; use the data it was trained on"
            )
        take = min(x.shape[0], max_tokens - n)
        x, y = x[:take].to(sae.W_dec.device), y[:take].to(sae.W_dec.device)
        f = sae.encode(x)
        ys.append(y)
        fs.append(f)
        y_hats.append(sae.decode(f))
        n += take
        if n >= max_tokens:
            break
    sae.train(was_training)
    if n == 0:
        raise InputError("no evaluation data: give at least one batch")
    y, y_hat, f = torch.cat(ys), torch.cat(y_hats), torch.cat(fs)
    counts = metrics.firing_counts(f)
    out: dict[str, Any] = {
        "architecture": sae.cfg.name,
        "n_tokens": n,
        "l0": metrics.l0(f),
        "mse": metrics.mse(y, y_hat),
        "explained_variance": metrics.explained_variance(y, y_hat),
        "cosine": metrics.cosine_similarity(y, y_hat),
        "relative_reconstruction_bias": metrics.relative_reconstruction_bias(y, y_hat),
        "norm_ratio": metrics.norm_ratio(y, y_hat),
        "dead_fraction": metrics.dead_fraction(counts),
        "dense_fraction": metrics.dense_fraction(counts, n),
    }
    if features is not None:
        best = metrics.max_cosine_per_feature(sae.W_dec.detach().cpu(), features.cpu())
        out["mmcs"] = float(best.mean())
        out["min_feature_cosine"] = float(best.min())
    return out

"""Evaluate a trained SAE on held-out batches: the core metrics, in one dict."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saescope import metrics
from saescope.data.outliers import OutlierRule
from saescope.data.stream import as_pair
from saescope.errors import InputError
from saescope.models.downstream import (
    MAX_BATCH,
    batch_size_for,
    check_batch_size,
    downstream,
    vocab_size,
)
from saescope.models.harvest import harvest
from saescope.models.hooks import HookPair
from saescope.saes import SAE

CHUNK_ROWS = 4096
"""Rows encoded at a time: a batch larger than this (a file's first rows, say) is taken in
pieces, so the dense codes f (rows x d_sae) stay small."""


def _pairs(
    sae: SAE, batches: Iterable[Any], max_tokens: int, chunk_rows: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """(x, y) of each batch on the SAE's device, checked, in pieces of at most chunk_rows rows,
    up to max_tokens rows in all (no batch is asked for once they are reached)."""
    n = 0
    if max_tokens <= 0:
        return
    for item in batches:
        x, y = as_pair(item)
        if x.shape[-1] != sae.cfg.d_in or y.shape[-1] != sae.cfg.d_out:
            raise InputError(
                f"data has d_in={x.shape[-1]}, d_out={y.shape[-1]} but the SAE expects "
                f"d_in={sae.cfg.d_in}, d_out={sae.cfg.d_out}; use the data it was trained on"
            )
        take = min(x.shape[0], max_tokens - n)
        for i in range(0, take, chunk_rows):
            j = min(i + chunk_rows, take)
            yield x[i:j].to(sae.W_dec.device), y[i:j].to(sae.W_dec.device)
        n += take
        if n >= max_tokens:
            return


Outliers = OutlierRule | float | None
"""How evaluation treats outlier tokens (see `data.outliers`): a rule (the run's, fitted when
it trained), a factor (a rule fitted on the first evaluation batch), or None (every token)."""


def _rule(outliers: Outliers, x: Tensor, y: Tensor) -> OutlierRule | None:
    if outliers is None or isinstance(outliers, OutlierRule):
        return outliers
    return OutlierRule.fit(x, y, outliers)


@torch.no_grad()
def evaluate(
    sae: SAE,
    batches: Iterable[Any],
    max_tokens: int = 65_536,
    features: Tensor | None = None,
    keep_density: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    outliers: Outliers = None,
) -> dict[str, Any]:
    """Metrics over up to `max_tokens` tokens of (x, y) batches (a bare tensor x means y = x),
    with the SAE in eval mode. Streaming: each batch (in pieces of `chunk_rows` rows) is
    encoded, scored into `metrics.MetricSums` and dropped.

    features: true feature directions (G, d_out) when the data has a ground truth; adds
    `mmcs` and `min_feature_cosine` (best-match cosine of the worst-recovered true feature).
    outliers: with a rule (or a factor), the metrics are those of the tokens within it, as
    training measured them; `outliers` says how many were set aside and `with_outliers` gives
    the metrics over every token.
    """
    kept, every = metrics.MetricSums(), metrics.MetricSums()
    rule = outliers if isinstance(outliers, OutlierRule) else None
    was_training = sae.training
    sae.eval()
    try:
        for x, y in _pairs(sae, batches, max_tokens, chunk_rows):
            rule = rule or _rule(outliers, x, y)
            f = sae.encode(x)
            y_hat = sae.reconstruct(f, x)  # forward's output: a skip connection's part too
            every.add(y, y_hat, f)
            if rule is not None:
                ok = rule.keep(x, y)
                kept.add(y[ok], y_hat[ok], f[ok])
    finally:
        sae.train(was_training)
    if every.n == 0 or every.counts is None:
        raise InputError("no evaluation data: give at least one batch")
    sums = every if rule is None else kept
    out: dict[str, Any] = {"architecture": sae.cfg.name, **sums.result()}
    if rule is not None:
        out["outliers"] = every.n - kept.n
        out["outlier_factor"] = rule.factor
        out["with_outliers"] = every.result()
    if keep_density:
        out["density"] = sums.counts.float() / max(sums.n, 1)  # type: ignore[union-attr]
    if features is not None:
        best = metrics.max_cosine_per_feature(sae.W_dec.detach().cpu(), features.cpu())
        out["mmcs"] = float(best.mean())
        out["min_feature_cosine"] = float(best.min())
    return out


def plot_density(density: Tensor, path: str | Path, title: str = "") -> Path:
    """A histogram of log10 feature density (dead latents counted apart), saved atomically as a
    PNG."""
    from saescope.report import save_figure, subplots  # matplotlib only when plotting

    live = density[density > 0]
    fig, ax = subplots(figsize=(6, 3.2))
    if live.numel():
        ax.hist(torch.log10(live).numpy(), bins=50, color="#3a6ea5")
    dead = int((density == 0).sum())
    ax.set_xlabel("log10 firing frequency (fraction of held-out tokens)")
    ax.set_ylabel("latents")
    ax.set_title(f"{title}  ({dead} of {density.numel()} latents never fired)".strip())
    fig.tight_layout()
    return save_figure(fig, path)


def model_batches(
    model: torch.nn.Module,
    contexts: Tensor,
    hooks: HookPair,
    max_tokens: int,
    batch_size: int = MAX_BATCH,
) -> Iterator[tuple[Tensor, Tensor]]:
    """(x, y) batches harvested from `contexts`, `batch_size` contexts per forward pass, until
    `max_tokens` rows have been given."""
    n = 0
    for rows in harvest(model, contexts, hooks.specs, batch_size):
        x, y = hooks.pick(rows)
        yield x, y
        n += x.shape[0]
        if n >= max_tokens:
            return


@torch.no_grad()
def evaluate_in_model(
    sae: SAE,
    model: torch.nn.Module,
    contexts: Tensor,
    x_hook: str,
    y_hook: str | None = None,
    max_tokens: int = 65_536,
    batch_size: int | None = None,
    outliers: Outliers = None,
) -> dict[str, Any]:
    """The core metrics over up to `max_tokens` held-out tokens of `contexts`, plus the
    downstream numbers with the SAE's reconstruction spliced in at the hook (an SAE on `M:in`
    replaces M's input; a transcoder, x_hook `M:in` and y_hook `M`, replaces module M):
    ce_clean, ce_spliced, ce_zero (the hook zero-ablated), ce_loss_recovered and kl_div, over
    the contexts that hold those tokens, position 0 left clean and its prediction left out.
    Also `density` (see `evaluate`). batch_size: contexts per forward pass, in the harvest
    and in each of the three downstream passes (memory grows with it: see `downstream`);
    None: `batch_size_for` the contexts and the model's vocabulary (MAX_BATCH without logits).
    outliers: see `evaluate`; an SAE's outlier tokens also keep their own activations in the
    spliced pass (a transcoder's are replaced like every other token)."""
    check_batch_size(batch_size)
    vocab = vocab_size(model, contexts)
    if batch_size is None:
        batch_size = batch_size_for(contexts.shape[1], vocab) if vocab else MAX_BATCH
    hooks = HookPair(x_hook, y_hook)
    batches = model_batches(model, contexts, hooks, max_tokens, batch_size)
    first = next(batches, None)
    if first is not None:
        outliers = _rule(outliers, *first)
        batches = itertools.chain([first], batches)
    out = evaluate(sae, batches, max_tokens, keep_density=True, outliers=outliers)
    if vocab is None:
        out["downstream"] = f"skipped: {type(model).__name__} gives no next-token logits"
        return out
    if contexts.shape[1] < 3:
        out["downstream"] = "skipped: contexts of 2 tokens leave no prediction past position 0"
        return out
    if y_hook is not None and not hooks.replaces_module():
        out["downstream"] = "skipped: a transcoder spliced in needs x_hook M:in and y_hook M"
        return out
    n_ctx = -(-out["n_tokens"] // (contexts.shape[1] - 1))
    was_training = sae.training
    sae.eval()

    rule = outliers if y_hook is None and isinstance(outliers, OutlierRule) else None

    def reconstruct(x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])
        rows_hat = sae(rows)
        if rule is not None:  # outlier tokens keep their own activations, as position 0 does
            rows_hat = torch.where(rule.keep(rows, rows)[:, None], rows_hat, rows)
        return rows_hat.reshape(*x.shape[:-1], sae.cfg.d_out)

    try:
        out.update(
            downstream(
                model,
                contexts[:n_ctx],
                x_hook,
                reconstruct,
                batch_size,
                keep_first=True,
                whole_module=y_hook is not None,
            )
        )
    finally:
        sae.train(was_training)
    return out

"""Downstream evaluation: next-token cross-entropy with a hook point's activations replaced
(by an SAE's reconstruction, or by zeros), and the KL divergence to the clean predictions.

The reconstruction goes in through `hooks.spliced`: at a module's output (`layers.2`), at its
input (`layers.2.mlp:in`), or, with `whole_module`, in place of the module's output (a transcoder
substituted for the MLP; the function must not call the hooked module itself). The model is
any module mapping ids (B, T) to logits (B, T, vocab), or to an output whose `.logits` they
are (Hugging Face causal LMs).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saescope import metrics
from saescope.errors import ConfigError
from saescope.models.hooks import Replacement, spliced


def model_logits(model: nn.Module, ids: Tensor) -> Tensor:
    """The model's logits (B, T, vocab) for ids: its output, or a Hugging Face output's
    `.logits` (ids go to the model's device)."""
    out = model(ids.to(next(iter(model.parameters()), ids).device))
    logits = out if isinstance(out, Tensor) else getattr(out, "logits", None)
    if not isinstance(logits, Tensor):
        raise ConfigError(
            f"{type(model).__name__} gives no logits (an encoder?); downstream CE needs a "
            "causal language model, such as glassllm or smollm2"
        )
    return logits


@torch.no_grad()
def vocab_size(model: nn.Module, ids: Tensor) -> int | None:
    """The width of the model's next-token logits (one pass over 2 tokens of ids), or None for
    a model without logits (an encoder)."""
    try:
        return model_logits(model, ids[:1, :2]).shape[-1]
    except ConfigError:
        return None


CHUNK = 2**23
"""Logit entries scored at a time (32 MiB in float32): blocks of whole contexts, or runs of
positions of one context, so the float log-softmax and its temporaries never span a batch."""

LOGITS_BUDGET = 2**27
"""Bytes of float32 logits one forward pass may give when the batch size is automatic."""

MAX_BATCH = 32
"""The most contexts per forward pass an automatic batch size takes."""


def batch_size_for(context: int, vocab: int) -> int:
    """The automatic batch size: as many contexts (1 to MAX_BATCH) as keep one pass's logits
    within LOGITS_BUDGET (5 for SmolLM2's 49,152-token vocabulary at 128 tokens; 32 for
    glassllm's 1,024). A batch's logits are held at most twice (see `downstream`)."""
    return max(1, min(MAX_BATCH, LOGITS_BUDGET // (4 * context * vocab)))


def check_batch_size(batch_size: int | None) -> None:
    """A ConfigError unless batch_size (contexts per forward pass) is None (automatic) or at
    least 1."""
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch size {batch_size}: give --batch-size of at least 1 context")


def _spans(batch: int, predictions: int, vocab: int, chunk: int) -> Iterator[tuple[slice, slice]]:
    """(contexts, positions) blocks of at most max(chunk, vocab) logits: as many whole
    contexts as fit, or else runs of positions of one context."""
    rows = max(1, chunk // vocab)
    if rows >= predictions:
        per = rows // predictions
        for b in range(0, batch, per):
            yield slice(b, min(b + per, batch)), slice(0, predictions)
        return
    for b in range(batch):
        for t in range(0, predictions, rows):
            yield slice(b, b + 1), slice(t, min(t + rows, predictions))


def _log_softmax(logits: Tensor) -> Tensor:
    """float32 log-probabilities of a block of logits (..., vocab)."""
    return F.log_softmax(logits.float(), -1)


def _ce_sum(logp: Tensor, targets: Tensor) -> float:
    """Summed cross-entropy of log-probabilities (..., vocab) against targets (...)."""
    return -float(logp.gather(-1, targets[..., None]).double().sum())


def _clean_pass(model: nn.Module, ids: Tensor, start: int, chunk: int) -> tuple[Tensor, float]:
    """The clean pass: its log-probabilities (B, T', vocab) float32, one per predicted position
    (T' = T - start - 1; written over the logits when they are float32), and summed CE."""
    logits = model_logits(model, ids)[:, start:-1]
    targets = ids[:, start + 1 :]
    logp = (
        logits if logits.dtype == torch.float32 else torch.empty_like(logits, dtype=torch.float32)
    )
    ce = 0.0
    for b, t in _spans(*logits.shape, chunk):
        part = _log_softmax(logits[b, t])
        ce += _ce_sum(part, targets[b, t])
        logp[b, t] = part
    return logp, ce


def _spliced_pass(
    model: nn.Module, ids: Tensor, start: int, chunk: int, clean: Tensor | None
) -> tuple[float, float]:
    """Summed CE of one forward pass (under whatever splice is attached) and, given the clean
    log-probabilities, summed KL(clean || this pass); the logits die on return."""
    logits = model_logits(model, ids)[:, start:-1]
    targets = ids[:, start + 1 :]
    ce = kl = 0.0
    for b, t in _spans(*logits.shape, chunk):
        logq = _log_softmax(logits[b, t])
        ce += _ce_sum(logq, targets[b, t])
        if clean is not None:
            logp = clean[b, t]
            kl += float((logp.exp() * (logp - logq)).sum(dtype=torch.float64))
    return ce, kl


@torch.no_grad()
def downstream(
    model: nn.Module,
    contexts: Tensor,
    hook: str,
    reconstruct: Replacement,
    batch_size: int | None = None,
    keep_first: bool = False,
    whole_module: bool = False,
    chunk: int = CHUNK,
) -> dict[str, float]:
    """Mean next-token CE clean, with `reconstruct` spliced in at `hook`, and with the hook
    zero-ablated; CE loss recovered; and the mean KL(clean || spliced) per predicted token.
    keep_first: position 0 stays clean in both (see `spliced`), and the prediction made at
    position 0, which no splice can change, is left out of every mean. whole_module: see
    `spliced` (a transcoder replacing the module of an `M:in` hook).

    Memory: `batch_size` contexts per forward pass (None: `batch_size_for` the contexts and
    the model's vocabulary); the clean log-probabilities of one batch are kept for the KL while
    the spliced pass runs, then dropped before the zero-ablated one; the float log-softmax runs
    over blocks of `chunk` logit entries."""
    start = 1 if keep_first else 0
    if contexts.shape[1] - 1 - start < 1:
        raise ConfigError(
            f"contexts of {contexts.shape[1]} tokens leave no prediction to score; "
            "use a longer --context"
        )
    check_batch_size(batch_size)
    if batch_size is None:
        batch_size = batch_size_for(
            contexts.shape[1], model_logits(model, contexts[:1, :2]).shape[-1]
        )
    sums = {"ce_clean": 0.0, "ce_spliced": 0.0, "ce_zero": 0.0, "kl_div": 0.0}
    n = 0
    device = next(iter(model.parameters()), contexts).device  # the model's
    for i in range(0, contexts.shape[0], batch_size):
        ids = contexts[i : i + batch_size].to(device)
        clean, ce = _clean_pass(model, ids, start, chunk)
        sums["ce_clean"] += ce
        with spliced(model, {hook: reconstruct}, keep_first, whole_module):
            ce, kl = _spliced_pass(model, ids, start, chunk, clean)
        del clean  # before the zero-ablated pass: never three batches of logits at once
        sums["ce_spliced"] += ce
        sums["kl_div"] += kl
        with spliced(model, {hook: torch.zeros_like}, keep_first, whole_module):
            sums["ce_zero"] += _spliced_pass(model, ids, start, chunk, None)[0]
        n += ids.shape[0] * (ids.shape[1] - start - 1)
    out = {k: v / n for k, v in sums.items()}
    out["ce_loss_recovered"] = metrics.ce_loss_recovered(
        out["ce_clean"], out["ce_spliced"], out["ce_zero"]
    )
    return out

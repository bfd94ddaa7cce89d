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


def _logits(model: nn.Module, ids: Tensor) -> Tensor:
    """The model's logits (B, T, vocab) for ids: its output, or a Hugging Face output's
    `.logits`."""
    out = model(ids)
    logits = out if isinstance(out, Tensor) else getattr(out, "logits", None)
    if not isinstance(logits, Tensor):
        raise ConfigError(
            f"{type(model).__name__} gives no logits (an encoder?); downstream CE needs a "
            "causal language model, such as glassllm or smollm2"
        )
    return logits


@torch.no_grad()
def gives_logits(model: nn.Module, ids: Tensor) -> bool:
    """Whether the model maps ids to next-token logits (a causal LM, not an encoder)."""
    try:
        _logits(model, ids[:1, :2])
    except ConfigError:
        return False
    return True


CHUNK = 2**23
"""Logit entries scored at a time (32 MiB in float32): positions are taken in runs of
max(1, CHUNK // vocab), so the float log-softmax and its temporaries never span a whole batch."""

BATCH_SIZE = 8
"""Contexts per forward pass: a batch's logits are batch x context x vocab floats (8 x 128 x
49,152 x 4 bytes = 201 MB for SmolLM2), held at most twice (the clean log-probabilities and one
spliced pass)."""


def _spans(batch: int, predictions: int, vocab: int, chunk: int) -> Iterator[tuple[int, slice]]:
    """(context, positions) runs of at most max(1, chunk // vocab) predictions each."""
    step = max(1, chunk // vocab)
    for b in range(batch):
        for t in range(0, predictions, step):
            yield b, slice(t, min(t + step, predictions))


def _log_softmax(logits: Tensor) -> Tensor:
    """float32 log-probabilities of a run of positions' logits (P, vocab)."""
    return F.log_softmax(logits.float(), -1)


def _ce_sum(logp: Tensor, targets: Tensor) -> float:
    """Summed cross-entropy of log-probabilities (P, vocab) against targets (P,)."""
    return -float(logp.gather(1, targets[:, None]).double().sum())


def _clean_pass(model: nn.Module, ids: Tensor, start: int, chunk: int) -> tuple[Tensor, float]:
    """The clean pass: its log-probabilities (B, T', vocab) float32, one per predicted position
    (T' = T - start - 1; written over the logits when they are float32), and summed CE."""
    logits = _logits(model, ids)[:, start:-1]
    targets = ids[:, start + 1 :]
    logp = (
        logits if logits.dtype == torch.float32 else torch.empty_like(logits, dtype=torch.float32)
    )
    ce = 0.0
    for b, span in _spans(*logits.shape, chunk):
        part = _log_softmax(logits[b, span])
        ce += _ce_sum(part, targets[b, span])
        logp[b, span] = part
    return logp, ce


def _spliced_pass(
    model: nn.Module, ids: Tensor, start: int, chunk: int, clean: Tensor | None
) -> tuple[float, float]:
    """Summed CE of one forward pass (under whatever splice is attached) and, given the clean
    log-probabilities, summed KL(clean || this pass); the logits die on return."""
    logits = _logits(model, ids)[:, start:-1]
    targets = ids[:, start + 1 :]
    ce = kl = 0.0
    for b, span in _spans(*logits.shape, chunk):
        logq = _log_softmax(logits[b, span])
        ce += _ce_sum(logq, targets[b, span])
        if clean is not None:
            logp = clean[b, span]
            kl += float((logp.exp() * (logp - logq)).sum(dtype=torch.float64))
    return ce, kl


@torch.no_grad()
def downstream(
    model: nn.Module,
    contexts: Tensor,
    hook: str,
    reconstruct: Replacement,
    batch_size: int = BATCH_SIZE,
    keep_first: bool = False,
    whole_module: bool = False,
    chunk: int = CHUNK,
) -> dict[str, float]:
    """Mean next-token CE clean, with `reconstruct` spliced in at `hook`, and with the hook
    zero-ablated; CE loss recovered; and the mean KL(clean || spliced) per predicted token.
    keep_first: position 0 stays clean in both (see `spliced`), and the prediction made at
    position 0, which no splice can change, is left out of every mean. whole_module: see
    `spliced` (a transcoder replacing the module of an `M:in` hook).

    Memory: `batch_size` contexts per forward pass; the clean log-probabilities of one batch
    are kept for the KL while the spliced pass runs, then dropped before the zero-ablated one;
    the float log-softmax runs over `chunk` logit entries at a time."""
    start = 1 if keep_first else 0
    if contexts.shape[1] - 1 - start < 1:
        raise ConfigError(
            f"contexts of {contexts.shape[1]} tokens leave no prediction to score; "
            "use a longer --context"
        )
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size}: give --batch-size of at least 1 context")
    sums = {"ce_clean": 0.0, "ce_spliced": 0.0, "ce_zero": 0.0, "kl_div": 0.0}
    n = 0
    for i in range(0, contexts.shape[0], batch_size):
        ids = contexts[i : i + batch_size]
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

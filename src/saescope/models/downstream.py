"""Downstream evaluation: next-token cross-entropy with a hook point's activations replaced
(by an SAE's reconstruction, or by zeros), and the KL divergence to the clean predictions.

The reconstruction goes in through `hooks.spliced`: at a module's output (`layers.2`), at its
input (`layers.2.mlp:in`), or, with `whole_module`, in place of the module's output (a transcoder
substituted for the MLP; the function must not call the hooked module itself). The model is
any module mapping ids (B, T) to logits (B, T, vocab), or to an output whose `.logits` they
are (Hugging Face causal LMs).
"""

from __future__ import annotations

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


def _ce(logits: Tensor, ids: Tensor) -> Tensor:
    """Summed next-token cross-entropy: position t predicts ids[:, t + 1]."""
    pred = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    return F.cross_entropy(pred, ids[:, 1:].reshape(-1), reduction="sum")


@torch.no_grad()
def downstream(
    model: nn.Module,
    contexts: Tensor,
    hook: str,
    reconstruct: Replacement,
    batch_size: int = 32,
    keep_first: bool = False,
    whole_module: bool = False,
) -> dict[str, float]:
    """Mean next-token CE clean, with `reconstruct` spliced in at `hook`, and with the hook
    zero-ablated; CE loss recovered; and the mean KL(clean || spliced) per predicted token.
    keep_first: position 0 stays clean in both (see `spliced`), and the prediction made at
    position 0, which no splice can change, is left out of every mean. whole_module: see
    `spliced` (a transcoder replacing the module of an `M:in` hook)."""
    start = 1 if keep_first else 0
    if contexts.shape[1] - 1 - start < 1:
        raise ConfigError(
            f"contexts of {contexts.shape[1]} tokens leave no prediction to score; "
            "use a longer --context"
        )
    sums = {"ce_clean": 0.0, "ce_spliced": 0.0, "ce_zero": 0.0, "kl_div": 0.0}
    n = 0
    for i in range(0, contexts.shape[0], batch_size):
        ids = contexts[i : i + batch_size]
        clean = _logits(model, ids)[:, start:]
        with spliced(model, {hook: reconstruct}, keep_first, whole_module):
            patched = _logits(model, ids)[:, start:]
        with spliced(model, {hook: torch.zeros_like}, keep_first, whole_module):
            zero = _logits(model, ids)[:, start:]
        targets = ids[:, start:]
        sums["ce_clean"] += float(_ce(clean, targets))
        sums["ce_spliced"] += float(_ce(patched, targets))
        sums["ce_zero"] += float(_ce(zero, targets))
        logp = F.log_softmax(clean[:, :-1].float(), -1)
        logq = F.log_softmax(patched[:, :-1].float(), -1)
        sums["kl_div"] += float((logp.exp() * (logp - logq)).sum())
        n += targets.shape[0] * (targets.shape[1] - 1)
    out = {k: v / n for k, v in sums.items()}
    out["ce_loss_recovered"] = metrics.ce_loss_recovered(
        out["ce_clean"], out["ce_spliced"], out["ce_zero"]
    )
    return out

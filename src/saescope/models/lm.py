"""What a causal LM's last steps are made of: the final norm's learned scale and the
unembedding, for saescope's own models (glassllm, the Llama port) and Hugging Face causal LMs;
direct logit effects build on them."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from saescope.errors import ConfigError

_FINAL_NORMS = ("norm", "norm_f", "final_layernorm", "ln_f", "final_layer_norm")


def _output_embedding(model: nn.Module) -> Tensor | None:
    for name in ("lm_head", "unembed"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module) and isinstance(getattr(head, "weight", None), Tensor):
            return head.weight  # (vocab, d)
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is not None:
        return head.weight
    if hasattr(model, "norm_f") and isinstance(getattr(model, "embed", None), nn.Embedding):
        return model.embed.weight  # glassllm: tied embeddings
    return None


def _final_norm_scale(model: nn.Module, d: int) -> Tensor:
    """The learned scale of the norm before the unembedding (ones when it has none)."""
    for name, module in reversed(list(model.named_modules())):
        if name.split(".")[-1] in _FINAL_NORMS:
            weight = getattr(module, "weight", None)
            if isinstance(weight, Tensor) and weight.shape == (d,):
                return weight
    return torch.ones(d)


def unembedding(model: nn.Module) -> tuple[Tensor, Tensor]:
    """(gamma (d,), W_U (d, vocab)), detached: a residual direction v reaches the logits as
    (v * gamma) @ W_U, up to the final norm's per-token denominator."""
    w = _output_embedding(model)
    if w is None:
        raise ConfigError(
            f"{type(model).__name__} has no unembedding (an encoder?); logit effects need a "
            "causal language model such as glassllm or smollm2"
        )
    gamma = _final_norm_scale(model, w.shape[1])
    return gamma.detach(), w.detach().t()

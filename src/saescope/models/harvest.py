"""Activations from a running model: text packed into fixed-length contexts, batched through
the model without gradients, one or several hook points collected in one forward pass, and
the pass stopped once the last of them has fired (early exit: the layers above are never run).

Hook points are module paths (`hooks.py`): `layers.2` is the module's output, `layers.2.mlp:in`
its input. The first position of every context is dropped by default: it has no left context
(and is where a BOS token would sit).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from saescope.errors import InputError
from saescope.models.hooks import Hook, HookPoint, attached, find_module


def pack(ids: Sequence[int], context: int) -> Tensor:
    """Token ids cut into whole contexts of `context` tokens: (n_contexts, context). The
    remainder shorter than a context is dropped (no padding)."""
    n = len(ids) // context
    if n == 0:
        raise InputError(
            f"the text has {len(ids)} tokens, fewer than one context of {context}; "
            "give more text or a shorter --context"
        )
    return torch.tensor(list(ids[: n * context]), dtype=torch.long).view(n, context)


class _Stop(Exception):
    """Raised inside the last hook to end the forward pass early."""


class Harvester:
    """Hooks on a model that collect the given points in one forward pass, then stop it
    (unless early_exit is False: then the whole forward pass runs, as for timing it)."""

    def __init__(self, model: nn.Module, hooks: Sequence[str], early_exit: bool = True) -> None:
        if not hooks:
            raise InputError("no hook points given; name at least one (saescope hooks MODEL)")
        self.model = model
        self.early_exit = early_exit
        self.specs = list(hooks)
        self.points = [HookPoint.parse(h) for h in hooks]
        for p in self.points:  # a wrong path is named now, with its close matches
            find_module(model, p.path)
        self._got: dict[HookPoint, Tensor] = {}

    def _keep(self, point: HookPoint) -> Hook:
        def keep(value: Any, _clean: Any) -> None:
            if not isinstance(value, Tensor):
                raise InputError(f"hook {point}: the module's output is not a tensor")
            self._got[point] = value.detach()
            if self.early_exit and len(self._got) == len(set(self.points)):
                raise _Stop

        return keep

    @torch.no_grad()
    def __call__(self, ids: Tensor) -> dict[str, Tensor]:
        """{hook spec: (B, T, d)} for one batch of contexts ids (B, T)."""
        self._got = {}
        observers = {spec: self._keep(p) for spec, p in zip(self.specs, self.points, strict=True)}
        try:
            with attached(self.model, observers):
                self.model(ids)
        except _Stop:
            pass
        missing = [str(p) for p in self.points if p not in self._got]
        if missing:
            raise InputError(f"hook points never reached in the forward pass: {missing}")
        return {s: self._got[p] for s, p in zip(self.specs, self.points, strict=True)}


def harvest(
    model: nn.Module,
    contexts: Tensor,
    hooks: Sequence[str],
    batch_size: int = 32,
    drop_first: bool = True,
    early_exit: bool = True,
    first_context: int = 0,
) -> Iterator[dict[str, Tensor]]:
    """Batches of activations: per batch of contexts, {hook spec: (n, d)} plus "tokens",
    "positions" and "contexts" (n,), one row per kept token (the first position of each
    context dropped when drop_first; a row's context index counts from `first_context`).
    early_exit=False runs every forward pass to the end. The contexts go to the model's
    device; the activations stay there (the token ids and indices on the contexts' own)."""
    grab = Harvester(model, hooks, early_exit)
    start = 1 if drop_first else 0
    device = next(iter(model.parameters()), contexts).device
    for i in range(0, contexts.shape[0], batch_size):
        ids = contexts[i : i + batch_size]
        acts = grab(ids.to(device))
        b, t = ids.shape
        out = {k: v[:, start:].reshape(b * (t - start), -1) for k, v in acts.items()}
        out["tokens"] = ids[:, start:].reshape(-1)
        out["positions"] = torch.arange(start, t).repeat(b)
        first = first_context + i
        out["contexts"] = torch.arange(first, first + b).repeat_interleave(t - start)
        yield out

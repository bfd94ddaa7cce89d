"""Helpers the experiments share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from saescope.saes import SAE, make_sae


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with n torch CPU threads (None: leave it), restoring the old count. One
    thread is fastest for the small matrices of the toy experiments and avoids oversubscribing
    a busy machine."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def sae_label(spec: dict[str, Any], hide: tuple[str, ...] = ()) -> str:
    """A short name for an SAE config, e.g. "topk k=3" (fields in `hide` left out)."""
    rest = " ".join(f"{k}={v}" for k, v in spec.items() if k != "architecture" and k not in hide)
    return f"{spec['architecture']} {rest}".strip()


def make_saes(specs: Sequence[dict[str, Any]], seed: int, **shared: Any) -> list[SAE]:
    """One SAE per spec (a config dict; `shared` fills the fields they have in common), each
    initialised from torch seed `seed * 1000 + i`, so one SAE's init never depends on the
    others'."""
    saes = []
    for i, spec in enumerate(specs):
        torch.manual_seed(seed * 1000 + i)
        saes.append(make_sae({**shared, **spec}))
    return saes

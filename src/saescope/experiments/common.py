"""Helpers the experiments share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


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

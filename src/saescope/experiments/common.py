"""Helpers the experiments share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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

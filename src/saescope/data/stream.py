"""Endless batch streams whose batch i is a pure function of i, so a run can restart anywhere."""

from __future__ import annotations

import abc
import itertools
from collections.abc import Iterator

import torch
from torch import Tensor

HELD_OUT_SEED_OFFSET = 1_000_003
"""Added to a training stream's seed to get held-out data from the same source."""


class IndexedBatches(abc.ABC):
    """A stream of (x, y) batches defined by `batch(i)`; `iter_from(start)` resumes it."""

    seed: int

    def generator(self, i: int) -> torch.Generator:
        """The random generator for draw number i of this stream (a batch, or an epoch)."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + i) % 2**63)

    @abc.abstractmethod
    def batch(self, i: int) -> tuple[Tensor, Tensor]:
        """Batch number i (0-based), the same every time it is asked for."""

    def iter_from(self, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        return (self.batch(i) for i in itertools.count(start))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iter_from(0)

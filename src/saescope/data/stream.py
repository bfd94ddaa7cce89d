"""Endless batch streams whose batch i is a pure function of i, so a run can restart anywhere."""

from __future__ import annotations

import abc
import itertools
from collections.abc import Iterator

from torch import Tensor


class IndexedBatches(abc.ABC):
    """A stream of (x, y) batches defined by `batch(i)`; `iter_from(start)` resumes it."""

    @abc.abstractmethod
    def batch(self, i: int) -> tuple[Tensor, Tensor]:
        """Batch number i (0-based), the same every time it is asked for."""

    def iter_from(self, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        return (self.batch(i) for i in itertools.count(start))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iter_from(0)

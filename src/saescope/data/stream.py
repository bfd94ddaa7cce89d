"""Endless batch streams whose batch i is a pure function of i, so a run can restart anywhere."""

from __future__ import annotations

import abc
import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from saescope.errors import InputError

HELD_OUT_SEED_OFFSET = 1_000_003
"""Added to a training stream's seed to get held-out data from the same source."""


def as_pair(item: Any) -> tuple[Tensor, Tensor]:
    """A batch as (x, y): a pair as it is, a bare tensor x as (x, x)."""
    if isinstance(item, Tensor):
        return item, item
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    raise InputError("batches must be tensors x or pairs (x, y) of tensors")


def on_device(batch: tuple[Tensor, Tensor], device: str) -> tuple[Tensor, Tensor]:
    """The batch on `device`, y still the same tensor as x when it was (an SAE's data)."""
    x = batch[0].to(device)
    return x, (x if batch[1] is batch[0] else batch[1].to(device))


class IndexedBatches(abc.ABC):
    """A stream of (x, y) batches defined by `batch(i)`; `iter_from(start)` resumes it.

    Every stream says what it gives the same way: `d_in` (x's width), `d_out` (y's), `y_is_x`
    (False when y is another tensor, a transcoder's target) and `tokens_per_batch` (rows per
    batch)."""

    seed: int
    batch_size: int
    per_epoch: int | None = None
    """Batches in one pass through a finite source (None: an endless one)."""

    @property
    @abc.abstractmethod
    def d_in(self) -> int:
        """Width of x."""

    @property
    def d_out(self) -> int:
        """Width of y (d_in when y is x)."""
        return self.d_in

    @property
    def y_is_x(self) -> bool:
        """Whether y is x (an SAE's data) rather than another tensor (a transcoder's)."""
        return True

    @property
    def tokens_per_batch(self) -> int:
        """Rows (tokens) in each batch."""
        return self.batch_size

    def generator(self, i: int) -> torch.Generator:
        """The random generator for draw number i of this stream (a batch, or an epoch)."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + i) % 2**63)

    @abc.abstractmethod
    def batch(self, i: int) -> tuple[Tensor, Tensor]:
        """Batch number i (0-based), the same every time it is asked for."""

    def part(self, i: int, lo: int, hi: int) -> tuple[Tensor, Tensor]:
        """Rows [lo, hi) of batch i, as batch(i) has them (a data-parallel process's share).
        Sources that can read only those rows (a file, a cache, a model) do."""
        x, y = self.batch(i)
        xs = x[lo:hi]
        return xs, (xs if y is x else y[lo:hi])

    def iter_from(self, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches start, start + 1, ... without computing the ones before."""
        return (self.batch(i) for i in itertools.count(start))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iter_from(0)


class RowBatches(IndexedBatches):
    """Batches of rows of one matrix (N, d), drawn with replacement; batch i is fixed by
    (seed, i)."""

    def __init__(self, rows: Tensor, batch_size: int, seed: int = 0) -> None:
        self.rows, self.batch_size, self.seed = rows, batch_size, seed

    @property
    def d_in(self) -> int:
        return self.rows.shape[1]

    def batch(self, i: int) -> tuple[Tensor, Tensor]:
        idx = torch.randint(self.rows.shape[0], (self.batch_size,), generator=self.generator(i))
        x = self.rows[idx]
        return x, x

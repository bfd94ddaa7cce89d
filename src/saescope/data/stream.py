"""Endless batch streams whose batch i is a pure function of i, so a run can restart anywhere."""

from __future__ import annotations

import abc
import contextvars
import itertools
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
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


HALF = (torch.bfloat16, torch.float16)
"""Dtypes a stream may give (a bfloat16 or float16 cache's rows) that arrive as float32."""


def _arrive(t: Tensor, device: str, non_blocking: bool = False) -> Tensor:
    t = t.to(device, non_blocking=non_blocking)
    return t.float() if t.dtype in HALF else t


def on_device(
    batch: tuple[Tensor, Tensor], device: str, non_blocking: bool = False
) -> tuple[Tensor, Tensor]:
    """The batch on `device` (half-precision rows converted to float32 there), y still the
    same tensor as x when it was (an SAE's data)."""
    x = _arrive(batch[0], device, non_blocking)
    return x, (x if batch[1] is batch[0] else _arrive(batch[1], device, non_blocking))


def _pinned(pairs: Iterator[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor] | None:
    """The next batch in page-locked host memory (None at the end), so its copy to the GPU
    can overlap the step before it."""
    b = next(pairs, None)
    if b is None:
        return None
    x = _pin(b[0])
    return x, (x if b[1] is b[0] else _pin(b[1]))


def _pin(t: Tensor) -> Tensor:
    """A host tensor in pinned memory (a copy); one already pinned, or on a device, as it is."""
    return t.pin_memory() if t.device.type == "cpu" and not t.is_pinned() else t


def _cuda_index(device: str) -> int:
    """The index of a CUDA device ("cuda" alone: the current one)."""
    index = torch.device(device).index
    return torch.cuda.current_device() if index is None else index


def _on_cuda_device(index: int) -> Any:
    """A thread initializer making CUDA device `index` the thread's current one (as
    DataLoader's pin-memory thread does)."""
    return lambda: torch.cuda.set_device(index)


def device_stream(
    batches: Iterable[Any], start: int, device: str, prefetch: bool | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches from position `start` (a direct jump where the stream has `iter_from`) as
    (x, y) pairs on `device`, float32 where the stream gave half precision.

    On the CPU they pass through unchanged (float32 batches are not copied). On CUDA each
    batch is copied to pinned host memory and sent with non_blocking=True; an `IndexedBatches`
    stream gives its batches as stored (`stored()`: a bfloat16 cache's half the bytes, made
    float32 on the GPU), and is read one batch ahead by a worker thread while the step runs
    (`prefetch`, default: on CUDA, for an `IndexedBatches`, whose batch i is fixed by i, so
    reading ahead changes nothing; another iterable is never read ahead of the loop). The
    worker reads in a copy of the caller's context (a model harvesting on the fly keeps the
    ambient `precision.model_precision`) on the caller's CUDA device."""
    indexed = isinstance(batches, IndexedBatches)
    cuda = torch.device(device).type == "cuda"
    if cuda and indexed:
        batches = batches.stored()  # type: ignore[union-attr]
    if hasattr(batches, "iter_from"):
        it: Iterator[Any] = batches.iter_from(start)  # type: ignore[attr-defined]
    else:
        it = itertools.islice(iter(batches), start, None)
    pairs = (as_pair(b) for b in it)
    if prefetch is None:
        prefetch = cuda and indexed
    if not prefetch:
        pin = _pinned if cuda else (lambda p: next(p, None))
        while (b := pin(pairs)) is not None:
            yield on_device(b, device, non_blocking=cuda)
        return
    read = _pinned if cuda else (lambda p: next(p, None))
    init = _on_cuda_device(_cuda_index(device)) if cuda else None
    with ThreadPoolExecutor(1, "saescope-prefetch", initializer=init) as pool:
        # each read in a fresh copy of the caller's context: the model's precision (a
        # contextvar, `precision.model_precision`) holds on the worker too
        ahead = pool.submit(contextvars.copy_context().run, read, pairs)
        while (b := ahead.result()) is not None:
            ahead = pool.submit(contextvars.copy_context().run, read, pairs)
            yield on_device(b, device, non_blocking=cuda)


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

    def stored(self) -> IndexedBatches:
        """The stream giving its batches as its source stores them (a bfloat16 cache's rows
        unconverted: `device_stream` makes them float32 on the GPU); by default itself."""
        return self

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

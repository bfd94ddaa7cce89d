"""The end of training: the last batches of a run (its tail), kept so that each SAE settles
what it estimates from data with its final weights (`SAE.finish_training`: BatchTopK's
inference threshold) before the final save.

A resumed run reads the tail's batches from before its checkpoint again, so it finishes on the
same batches as an uninterrupted run (bitwise, for a deterministic stream of equal batches).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence

from torch import Tensor

from saescope.data.stream import on_device
from saescope.training.checkpoint import Position
from saescope.training.optim import Slot

TAIL_TOKENS = 8192
"""Tokens of the last batches kept for `SAE.finish_training` (whole batches, at least one)."""


class Tail:
    """The x of the run's last batches as training saw them (outlier tokens set aside, not yet
    normalised), as many batches as cover TAIL_TOKENS tokens at the stream's batch size.
    `gather`: every process's rows of a batch together (data parallel), so each process
    finishes on the whole batches."""

    def __init__(
        self,
        steps: int,
        batch_tokens: int | None = None,
        gather: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.steps = steps
        self.gather = gather
        self.size = 0
        self.xs: deque[Tensor] = deque()
        if batch_tokens:
            self._sized(batch_tokens)

    def _sized(self, batch_tokens: int) -> None:
        self.size = max(1, -(-TAIL_TOKENS // max(1, batch_tokens)))
        self.xs = deque(maxlen=self.size)

    @property
    def start(self) -> int:
        """The first step whose batch the tail keeps."""
        return max(0, self.steps - self.size)

    def keep(self, step: int, x: Tensor, rows: int) -> None:
        """Called with every batch trained on (step counts from 0); rows: the batch's size
        as the stream gave it (which sizes the tail, as `Position.tokens` counts)."""
        if not self.size:
            self._sized(rows)
        if step >= self.start:
            self.xs.append(self.gather(x) if self.gather else x)


Batches = Iterator[tuple[Tensor, Tensor]]


def resumed(
    steps: int,
    pos: Position,
    open_at: Callable[[int], Batches],
    device: str,
    gather: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tail, Batches]:
    """A resumed run's tail and its stream from the checkpoint on: when the checkpoint lies
    inside the tail, the stream opens at the tail's start and the batches before the
    checkpoint go into the tail only (their outliers set aside by the run's rule)."""
    tail = Tail(steps, pos.tokens // max(1, pos.step), gather)
    start = min(pos.step, tail.start)
    stream = open_at(start)
    for step in range(start, pos.step):
        batch = next(stream, None)
        if batch is None:
            break
        x, y = on_device(batch, device)
        rows = x.shape[0]
        if pos.outlier_rule is not None:
            x = pos.outlier_rule.split(x, y)[0]
        tail.keep(step, x, rows)
    return tail, stream


def finish(slots: Sequence[Slot], tail: Tail) -> None:
    """Each SAE's `finish_training` on the tail, normalised as training saw it; what it
    returns joins the SAE's final metrics."""
    for s in slots:
        extra = s.sae.finish_training([x * s.scale_in for x in tail.xs])
        if extra:
            s.last_log = {**(s.last_log or {}), **extra}

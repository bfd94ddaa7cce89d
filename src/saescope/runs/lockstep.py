"""Several `training.train` runs fed in lock step from one source of batches: the source
(a model run once per batch for every hook point, or an exchange between ranks) makes batch i
once, and each run takes its own tensor of it. Each run is the plain single-SAE loop in its
own thread, so its folder, metrics, checkpoints and resume are those of a run of one SAE.

The threads take turns (a baton: a run computes only while it holds it, and lets it go while
it waits for its next batch), so they never share the sparse path's buffers or the CPU's
threads, and each computes exactly what it would alone. The main thread makes the batches
and, with several processes, performs every collective: the same ones in the same order on
every rank, whatever it owns (`Driver.status` once per step, then the source's exchange).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from saescope.errors import SaescopeError
from saescope.parallel import DDPGroup
from saescope.precision import model_precision
from saescope.training import TrainResult

WAIT_S = 0.2
"""Seconds between the main thread's looks at a run that does not take its batch."""


class Stopped(SaescopeError):
    """Another run (or another rank's) failed, so this one stops too."""


@dataclass
class Job:
    """One SAE's run: `run(feed)` trains it on the batches `feed` gives (returns its
    `TrainResult`); `result` or `error` once its thread ends."""

    run: Callable[[Any], TrainResult]
    name: str
    end: int | None = None
    """The batches it reads, if known (none are made for it from there on)."""
    start: int | None = None
    result: TrainResult | None = None
    error: BaseException | None = None
    inbox: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=1))
    thread: threading.Thread | None = None
    registered: threading.Event = field(default_factory=threading.Event)

    @property
    def live(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


class Feed:
    """The batches one job's training loop reads: `iter_from(start)` says where it starts
    (the main thread makes no batch before every job has said so) and yields what the main
    thread hands it, letting the baton go while it waits."""

    def __init__(self, job: Job, baton: threading.Lock) -> None:
        self.job, self.baton = job, baton

    def iter_from(self, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        self.job.start = start
        self.job.registered.set()
        return self._batches()

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iter_from(0)

    def _batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            self.baton.release()
            try:
                item = self.job.inbox.get()
            finally:
                self.baton.acquire()
            if isinstance(item, BaseException):
                raise item
            yield item


class Driver:
    """Runs `jobs` (this process's) in lock step. `make(i)` gives batch i's tensor for each
    job, by position in `jobs` (and performs batch i's collectives); `group`: the processes
    (None: this one alone), which agree on where to start and when to stop. Each job gets
    the batches from its start on; batches are made until every job of every process has
    ended. `make` runs at model precision `precision` (the runs' settled one: "fp32" or
    "bf16"), as a model's forward does inside a single run's loop."""

    def __init__(
        self,
        jobs: Sequence[Job],
        make: Callable[[int], Sequence[Tensor]],
        group: DDPGroup | None = None,
        precision: str = "fp32",
    ) -> None:
        self.jobs, self.make, self.group = list(jobs), make, group
        self.precision = precision
        self.baton = threading.Lock()

    def run(self) -> list[TrainResult]:
        for job in self.jobs:
            job.thread = threading.Thread(target=self._work, args=(job,), daemon=True)
            job.thread.start()
        try:
            with model_precision(self.precision):
                self._feed(self._start())
        except BaseException as e:
            for job in self.jobs:  # let them end: no more batches come
                _offer(job, Stopped(f"stopped: {e}"))
            raise
        for job in self.jobs:
            job.thread.join()  # type: ignore[union-attr]
        self._check_end()
        return [job.result for job in self.jobs]  # type: ignore[misc]

    def _work(self, job: Job) -> None:
        try:
            with self.baton:
                if self.group is not None and self.group.device.type == "cuda":
                    torch.cuda.set_device(self.group.device)  # per thread: this rank's GPU
                job.result = job.run(Feed(job, self.baton))
        except BaseException as e:  # handed to the main thread
            job.error = e
        finally:
            job.registered.set()

    def _check_end(self) -> None:
        """Every run of every process saved (or one failed: its error here, a line there)."""
        failed = [j for j in self.jobs if j.error is not None]
        mine = torch.tensor([len(failed)], dtype=torch.int64)
        bad = int((mine if self.group is None else self.group.sum_(mine))[0])
        if failed:
            raise failed[0].error  # type: ignore[misc]
        if bad:
            rank = self.group.rank if self.group is not None else 0
            raise Stopped(
                f"rank {rank}: another rank's training failed at its end (its own error says "
                "why); stopping"
            )

    def _start(self) -> int:
        """The first batch any job of any process needs."""
        for job in self.jobs:
            job.registered.wait()
        starts = [j.start for j in self.jobs if j.start is not None and j.error is None]
        first = torch.tensor([min(starts, default=2**62)], dtype=torch.int64)
        return int((first if self.group is None else self.group.min_(first))[0])

    def _feed(self, i: int) -> None:
        while True:
            failed = [j for j in self.jobs if _failed(j)]
            wanting = sum(j.live and (j.end is None or i < j.end) for j in self.jobs)
            flags = torch.tensor([len(failed), wanting], dtype=torch.int64)
            bad, live = (flags if self.group is None else self.group.sum_(flags)).tolist()
            if failed:
                raise failed[0].error  # type: ignore[misc]
            if bad:
                raise Stopped(
                    f"rank {self.group.rank}: another rank's training failed (its own error says "
                    "why); stopping"
                )
            if not live:
                return
            tensors = self.make(i)
            for job, x in zip(self.jobs, tensors, strict=True):
                if job.start is not None and i >= job.start:
                    _offer(job, (x, x))
            i += 1


def _failed(job: Job) -> bool:
    return job.error is not None and not isinstance(job.error, Stopped)


def _offer(job: Job, item: Any) -> None:
    """Hand `item` to the job, waiting while it runs and giving up once it has ended."""
    while job.live:
        try:
            job.inbox.put(item, timeout=WAIT_S)
            return
        except queue.Full:
            continue

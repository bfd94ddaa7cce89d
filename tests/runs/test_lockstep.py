"""The lock step of several runs: each gets batch i from its own start on, made once for all;
no batch is made past what the runs read; a run that fails stops the others and its error is
the driver's."""

from __future__ import annotations

import pytest
import torch

from saescope import precision
from saescope.errors import InputError
from saescope.runs.lockstep import Driver, Job, Stopped


def _reader(n: int, start: int = 0, fail_at: int | None = None):
    def run(feed):
        got = []
        for i, (x, y) in enumerate(feed.iter_from(start)):
            assert y is x
            if fail_at is not None and start + i == fail_at:
                raise InputError("batch is bad")
            got.append(int(x))
            if len(got) == n:
                return got
        return got

    return run


def test_each_run_reads_from_its_start_and_no_batch_is_wasted():
    made = []

    def make(i):
        made.append(i)
        return [torch.tensor(i), torch.tensor(i)]

    jobs = [Job(_reader(4), "a", end=4), Job(_reader(2, start=2), "b", end=4)]
    assert Driver(jobs, make).run() == [[0, 1, 2, 3], [2, 3]]
    assert made == [0, 1, 2, 3]


def test_a_failing_run_stops_the_others():
    jobs = [Job(_reader(50), "a"), Job(_reader(50, fail_at=3), "b")]
    with pytest.raises(InputError, match="batch is bad"):
        Driver(jobs, lambda i: [torch.tensor(i)] * 2).run()
    jobs[0].thread.join(timeout=10)  # stopped too: it is told, and no more batches come
    assert isinstance(jobs[0].error, Stopped)


def test_batches_are_made_at_the_runs_model_precision():
    """`make(i)` (a model harvesting on the fly, on the main thread) runs at the precision
    the runs train at, not the main thread's default fp32."""
    seen = []

    def make(i):
        seen.append(precision.model_dtype())
        return [torch.tensor(i)]

    Driver([Job(_reader(3), "a", end=3)], make, precision="bf16").run()
    assert len(seen) == 3 and set(seen) == {torch.bfloat16}
    seen.clear()
    Driver([Job(_reader(2), "a", end=2)], make).run()
    assert seen == [None, None]

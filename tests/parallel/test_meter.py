"""The byte meter: per kind, the calls, the bytes given and the bytes sent under the model
(the real 2-rank count is in tests/parallel/test_ddp.py)."""

import torch

from saescope.parallel.meter import Meter, payload_bytes


def test_counts_by_kind_and_resets():
    m = Meter(size=4, rank=0, backend="nccl")
    m.add("sum", "all_reduce", 1000)
    m.add("sum", "all_reduce", 1000)
    m.add("gather", "all_gather", 10)
    snap = m.snapshot()
    assert snap["sum"]["calls"] == 2 and snap["sum"]["tensor"] == 2000
    assert snap["sum"]["wire"] == 3000 and snap["gather"]["wire"] == 30
    assert snap["total"]["tensor"] == 2010 and snap["total"]["os"] is None
    m.reset()
    assert m.snapshot() == {"total": {"calls": 0, "tensor": 0, "wire": 0.0, "os": None}}


def test_the_bytes_given_to_each_collective():
    t = torch.zeros(10, 3)
    assert payload_bytes("all_reduce", (t,)) == 120
    assert payload_bytes("broadcast", (t.double(),)) == 240
    assert payload_bytes("all_gather", ([t, t], t[:2])) == 24
    assert payload_bytes("all_to_all", ([t, t], [t[:1], t[:2]])) == 36

"""The byte meter of a process group (`DDPGroup.meter`): per kind of collective (the group's
operation: sum, min, broadcast, gather, kth_largest, ...), the calls, the bytes this rank gave
to the collectives (`tensor`), the bytes it sends on the wire under the algorithm the backend
runs (`wire`, the model of `parallel.wire`), and, where the process's own counters show them
(Linux, gloo: sockets written through write/writev), the bytes it actually wrote during the
collectives (`os`).

    group.meter.reset()
    ...  # some steps
    group.meter.snapshot()  # {"sum": {"calls": 12, "tensor": ..., "wire": ..., "os": ...},
                            #  ..., "total": {...}}
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from saescope.parallel.wire import wire_bytes

PROC_IO = Path("/proc/self/io")


@dataclass
class Count:
    """One kind of collective's running totals on this rank."""

    calls: int = 0
    tensor: int = 0
    wire: float = 0.0
    os: int | None = None

    def add(self, other: Count) -> None:
        self.calls += other.calls
        self.tensor += other.tensor
        self.wire += other.wire
        if other.os is not None:
            self.os = (self.os or 0) + other.os


class Meter:
    """Bytes moved by this rank's collectives, by kind, since the last `reset`."""

    def __init__(self, size: int, rank: int = 0, backend: str = "nccl") -> None:
        self.size, self.rank, self.backend = size, rank, backend
        self.os_counted = backend == "gloo" and _written() is not None
        self.counts: dict[str, Count] = {}

    def reset(self) -> None:
        self.counts = {}

    def add(
        self, kind: str, collective: str, nbytes: int, os_bytes: int | None = None, root: int = 0
    ) -> None:
        """One call of `collective` (a torch.distributed name) for `kind`, given `nbytes`
        (see `wire.wire_bytes`; `root`: a gather's or broadcast's), of which the process
        wrote `os_bytes` to its sockets."""
        wire = wire_bytes(collective, nbytes, self.size, self.rank, self.backend, root)
        self.counts.setdefault(kind, Count()).add(Count(1, nbytes, wire, os_bytes))

    @contextlib.contextmanager
    def measure(self, kind: str, collective: str, nbytes: int, root: int = 0) -> Iterator[None]:
        """Count the collective run inside the block (its socket writes too, where seen)."""
        before = _written() if self.os_counted else None
        yield
        after = _written() if before is not None else None
        os_bytes = None if before is None or after is None else after - before
        self.add(kind, collective, nbytes, os_bytes, root)

    def snapshot(self) -> dict[str, dict[str, float | int | None]]:
        """Every kind's totals, and their sum under "total" (plain numbers, JSON-ready)."""
        total = Count()
        out = {}
        for kind, count in sorted(self.counts.items()):
            out[kind] = asdict(count)
            total.add(count)
        out["total"] = asdict(total)
        return out


def _written() -> int | None:
    """The bytes this process has written through write-like system calls (wchar), if the
    system says (Linux); socket writes included."""
    try:
        for line in PROC_IO.read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def payload_bytes(collective: str, args: tuple[Any, ...]) -> int:
    """The bytes this rank gives a torch.distributed collective called with `args`: the
    tensor of all-reduce and broadcast, the input of all-gather and reduce-scatter (the
    second argument: `op(outputs, input)`), all inputs of all-to-all."""
    tensors = [a for a in args if hasattr(a, "element_size")]
    lists = [a for a in args if isinstance(a, list | tuple)]
    if collective.startswith(("all_gather", "reduce_scatter", "all_to_all")):
        given = args[1] if len(args) > 1 else args[0]
        parts = given if isinstance(given, list | tuple) else [given]
        return sum(_nbytes(t) for t in parts)
    if tensors:
        return _nbytes(tensors[0])
    return sum(_nbytes(t) for t in (lists[0] if lists else ()))


def _nbytes(t: Tensor) -> int:
    return int(t.numel() * t.element_size())

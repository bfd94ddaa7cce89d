"""How `saescope train` runs as a process: its options for several processes (`--parallel`,
`--dist-timeout`; under torchrun it joins the others for the run, `saescope.parallel.launched`)
and what it says when a signal stops it."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from shlex import quote
from typing import Any

from saescope import parallel, runs
from saescope.training import CHECKPOINT_FILE
from saescope.training.checkpoint import read_meta

PARALLEL = (
    "how several processes (torchrun --nproc-per-node N -m saescope train ...) share the "
    "training: ddp, each rank trains on its share of every global batch (--batch-size stays "
    "the global batch); the default when WORLD_SIZE > 1. layers: the SAEs of several hook "
    "points (--hook a,b,c) spread over the ranks (the default for them). latents: one SAE's "
    "latents sharded over the ranks, each reading the whole batch (topk, batchtopk, relu, "
    "jumprelu; docs/DISTRIBUTED.md)"
)
TIMEOUT = (
    "seconds a rank waits for the others before it stops with an error naming the lost rank "
    f"(default {parallel.DEFAULT_TIMEOUT:g}; longer than rank 0's checkpoint writes)"
)


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("several processes")
    g.add_argument("--parallel", choices=parallel.MODES, help=PARALLEL)
    g.add_argument("--dist-timeout", type=float, default=parallel.DEFAULT_TIMEOUT, help=TIMEOUT)


@contextlib.contextmanager
def joined(ns: argparse.Namespace, train: dict[str, Any]) -> Iterator[Any]:
    """The process group for the run (None for one process), left when the block ends; its
    backend follows the run's device and its mode the run's (a resumed run's own, unless
    --device or --parallel is given)."""
    out = ns.out
    if ns.resume and runs.is_layered(out):  # its hook points' runs record the device
        out = runs.hook_run(out, runs.hooks_of(out)[0])
    meta = (read_meta(out) or {}) if ns.resume else {}
    recorded = meta.get("train", {})
    device = str(train.get("device") or recorded.get("device") or "cpu")
    mode = ns.parallel or (meta.get("run") or {}).get("parallel")  # a run resumes as it ran
    with parallel.launched(mode, device, ns.dist_timeout) as group:
        yield group


def speaks(group: Any) -> bool:
    """Whether this process prints the run's summary: one process, or rank 0 of several."""
    return group is None or group.rank == 0


def interrupted(ns: argparse.Namespace, e: KeyboardInterrupt) -> str:
    """What to say when Ctrl-C or SIGTERM stopped training: how to continue."""
    saved = ns.out.glob(f"*/{CHECKPOINT_FILE}") if runs.is_layered(ns.out) else []  # per hook
    if not ((ns.out / CHECKPOINT_FILE).is_file() or any(saved)):
        return "interrupted before the first checkpoint; start the run again"
    return f"{e or 'interrupted'}; resume with: saescope train --out {quote(str(ns.out))} --resume"

"""`saescope demo`: every experiment of the seed article, measured, in one report."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    d = sub.add_parser(
        "demo", help="run every experiment of the seed article; write runs/demo/report.html"
    )
    d.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    d.add_argument(
        "--seeds", type=int, default=3, help="seeds for the cheap experiments (the rest use seed 0)"
    )
    d.add_argument(
        "--all-seeds",
        action="store_true",
        help="run the expensive experiments on every seed too (about 3x longer)",
    )
    d.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="experiments run at once, each in its own process (default: one per core, at "
        "most 4; 1 runs them one after the other in this process)",
    )
    d.add_argument(
        "--quick",
        action="store_true",
        help="a few steps each: the report's shape, not its claims (a claim that fails is shown "
        "as not checked at these settings)",
    )
    return d


def run(ns: argparse.Namespace) -> int:
    from saescope.experiments import demo  # imported here: every experiment and matplotlib

    demo.run(ns.out, seeds=ns.seeds, quick=ns.quick, all_seeds=ns.all_seeds, jobs=ns.jobs)
    return 0

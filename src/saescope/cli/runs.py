"""`saescope runs`: the runs under a folder, one row per SAE, with their architecture, data,
steps and final metrics (`--json`: a JSON list)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from saescope.cli.eval import finite
from saescope.errors import InputError
from saescope.runs import find_runs
from saescope.text import table

COLUMNS = ["run", "sae", "architecture", "d_sae", "k", "data", "steps", "tokens"]
METRICS = ["l0", "explained_variance", "dead_fraction"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    r = sub.add_parser("runs", help="list the runs under a folder with their final metrics")
    r.add_argument("dir", help="a folder searched for runs (saescope train --out), subfolders too")
    r.add_argument("--json", action="store_true", help="print a JSON list, one object per SAE")
    return r


def _cells(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the table shows it: steps as done/total while unfinished, '-' for nothing."""
    cells = {k: "-" if v is None else v for k, v in row.items()}
    if row.get("finished") is False:
        cells["steps"] = f"{row['steps']}/{row['total_steps']}"
    if row.get("error"):
        cells["architecture"] = "unreadable"
    return cells


def run(ns: argparse.Namespace) -> int:
    rows = find_runs(ns.dir)
    if not rows:
        raise InputError(
            f"no runs under {ns.dir} (no folder there holds a cfg.json or a checkpoint); "
            "give the folder that holds them, or make one with saescope train --out"
        )
    if ns.json:
        print(json.dumps(finite(rows)))
        return 0
    cols = [c for c in COLUMNS if c != "sae" or any(r["sae"] for r in rows)]
    cols += [m for m in METRICS if any(m in r for r in rows)]
    print(table([_cells(r) for r in rows], cols, max_width=60))
    unfinished = sum(r.get("finished") is False for r in rows)
    if unfinished:
        print(f"{unfinished} not finished (steps done/total): saescope train --out RUN --resume")
    for r in rows:
        if r.get("error"):
            print(f"{r['run']}: {r['error']}")
    return 0

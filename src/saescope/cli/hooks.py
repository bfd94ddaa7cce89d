"""`saescope hooks`: a model's hook points with their output and input shapes."""

from __future__ import annotations

import argparse

import torch

from saescope.cli import options
from saescope.models import describe_hooks, load_model
from saescope.text import table

COLUMNS = ["hook point", "module", "output (PATH)", "input (PATH:in)"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    h = sub.add_parser(
        "hooks", help="list a model's hook points with their output and input (:in) shapes"
    )
    h.add_argument("model", help=options.MODEL_HELP)
    return h


def _size(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else " x ".join(map(str, shape))


def run(ns: argparse.Namespace) -> int:
    model, _ = load_model(ns.model)
    ids = torch.zeros(1, 8, dtype=torch.long)  # any short context: shapes per token
    rows = [
        dict(zip(COLUMNS, (h.path, h.module, _size(h.output), _size(h.input)), strict=True))
        for h in describe_hooks(model, ids)
    ]
    print(table(rows, COLUMNS))
    print("shapes for 1 context of 8 tokens; train on PATH (output) or PATH:in (input)")
    return 0

"""`saescope hooks`: a model's hook points and their output shapes."""

from __future__ import annotations

import argparse

import torch

from saescope.cli import options
from saescope.models import describe_hooks, load_model
from saescope.text import table

COLUMNS = ["hook point", "module", "output shape (1 context of 8 tokens)"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    h = sub.add_parser("hooks", help="list a model's hook points and their output shapes")
    h.add_argument("model", help=options.MODEL_HELP)
    return h


def run(ns: argparse.Namespace) -> int:
    model, _ = load_model(ns.model)
    ids = torch.zeros(1, 8, dtype=torch.long)  # any short context: shapes per token
    rows = []
    for path, kind, shape in describe_hooks(model, ids):
        size = "-" if shape is None else " x ".join(map(str, shape))
        rows.append(dict(zip(COLUMNS, (path, kind, size), strict=True)))
    print(table(rows, COLUMNS))
    return 0

"""`saescope features RUN`: the features most specific to a token or word (`--token`), by
activation on it against elsewhere and by direct logit effect, or without one the most active
features, on the run's held-out text."""

from __future__ import annotations

import argparse
import json
from typing import Any

from saescope.cli import peer
from saescope.cli.eval import finite
from saescope.steer.search import search_run
from saescope.text import table

TOKEN_COLUMNS = ["feature", "score", "mean_on", "mean_off", "precision", "recall", "max_act"]
TOKEN_COLUMNS += ["logit", "logit_rank", "top_tokens"]
TOP_COLUMNS = ["feature", "mean", "density", "mean_active", "max_act", "top_tokens"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    f = sub.add_parser(
        "features", help="find features: those most specific to a word, or the most active"
    )
    f.add_argument("run", help="run folder written by saescope train on a model's activations")
    f.add_argument("--top", type=int, default=10, help="features to list (default 10)")
    f.add_argument(
        "--token",
        default=None,
        help="a token or word, e.g. ' Queen' (mind the leading space: a word inside a "
        "sentence); a word of several tokens is found at its last token. Without it: the "
        "most active features",
    )
    f.add_argument(
        "--tokens", type=int, default=65_536, help="held-out tokens to search (default 65,536)"
    )
    f.add_argument("--sae", default=None, help="which SAE of a run of several (default: first)")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    peer.add_args(f)
    return f


def _rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "top_tokens": " ".join(map(repr, r["top_tokens"] or []))} for r in rows]


def run(ns: argparse.Namespace) -> int:
    out = search_run(peer.open_run(ns), ns.top, ns.token, ns.tokens, ns.sae)
    if ns.json:
        print(json.dumps(finite(out)))
        return 0
    if ns.token is None:
        print(f"the {ns.top} most active features (mean activation over every position):")
        print(table(_rows(out["features"]), TOP_COLUMNS, max_width=60))
        return 0
    print(
        f"{out['token']!r} (token ids {out['ids']}): {out['occurrences']} occurrences in "
        f"{out['positions']:,} positions of {out['contexts']} held-out contexts"
    )
    print("\nby activation on it (score: harmonic mean of its share of the feature's")
    print("activation and the fraction of its occurrences where the feature fires):")
    print(table(_rows(out["by_activation"]), TOKEN_COLUMNS, max_width=60))
    if out["by_logit"]:
        print(f"\nby logit effect (the rank of {out['token']!r} among the feature's direct")
        print("logits, then the logit's size; features that fire on the text):")
        print(table(_rows(out["by_logit"]), TOKEN_COLUMNS, max_width=60))
    return 0

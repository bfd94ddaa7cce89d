"""`saescope steer`: a run's model continues a prompt unsteered and with features edited, side
by side, with each edited feature's top logit tokens and their probability before and after."""

from __future__ import annotations

import argparse
import json
import textwrap
from itertools import zip_longest
from typing import Any

from saescope.cli import peer
from saescope.errors import InputError
from saescope.steer.prompt import steer_prompt
from saescope.text import table

WIDTH = 40
FEATURE = (
    "ID=VALUE: edit feature ID (repeat for several): set it to VALUE (--mode set), add VALUE "
    "(add) or multiply it by VALUE (scale); none: steered equals unsteered"
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    s = sub.add_parser("steer", help="continue a prompt with features of a run's SAE edited")
    s.add_argument("run", help="run folder written by saescope train (on a model)")
    s.add_argument("--feature", action="append", default=[], metavar="ID=VALUE", help=FEATURE)
    s.add_argument("--mode", default="set", help="set, add, scale or zero (default: set)")
    s.add_argument("--prompt", required=True, help="the text to continue")
    s.add_argument("--max-new-tokens", type=int, default=20, help="tokens to generate (20)")
    s.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    s.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling cut (1: none)")
    s.add_argument("--seed", type=int, default=None, help="sampling seed (both runs share it)")
    s.add_argument("--sae", default=None, help="which SAE of a run with several (sae_0, ...)")
    s.add_argument("--top-tokens", type=int, default=5, help="logit tokens per feature (5)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    peer.add_args(s, device=True)
    return s


def parse_feature(text: str) -> tuple[int, float]:
    """'ID=VALUE' -> (id, value), or a one-line error."""
    fid, sep, value = text.partition("=")
    if not sep:
        raise InputError(f"--feature {text}: give ID=VALUE, e.g. --feature 3=8")
    try:
        feature = int(fid)
    except ValueError:
        raise InputError(f"--feature {text}: feature id {fid!r} is not an integer") from None
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"--feature {text}: value {value!r} is not a number") from None
    return feature, number


def _side_by_side(out: dict[str, Any]) -> str:
    left = textwrap.wrap(out["unsteered"], WIDTH) or [""]
    right = textwrap.wrap(out["steered"], WIDTH) or [""]
    rows = [{"unsteered": a, "steered": b} for a, b in zip_longest(left, right, fillvalue="")]
    return table(rows, ["unsteered", "steered"])


def _tokens(out: dict[str, Any]) -> str:
    rows = [
        {"feature": f["id"], "value": f["value"], **t, "token": json.dumps(t["token"])}
        for f in out["features"]
        for t in f["top_tokens"]
    ]
    return table(rows, ["feature", "value", "token", "p_unsteered", "p_steered"])


def run(ns: argparse.Namespace) -> int:
    edits = [parse_feature(f) for f in ns.feature]
    out = steer_prompt(
        peer.open_run(ns),
        edits,
        ns.prompt,
        ns.mode,
        ns.max_new_tokens,
        ns.temperature,
        ns.seed,
        ns.top_p,
        ns.sae,
        ns.top_tokens,
    )
    if ns.json:
        print(json.dumps(out))
        return 0
    print(f"prompt: {out['prompt']}")
    print(_side_by_side(out))
    if out["features"]:
        print()
        print("top logit tokens of each edited feature, next-token p at the end of the prompt:")
        print(_tokens(out))
    return 0

"""`saescope convert SRC --to FORMAT --out DIR`: an SAE folder in any format saescope reads,
written in another (saescope, SAELens, ...), which that library's own loader reads with the
same encode/decode numbers."""

from __future__ import annotations

import argparse

from saescope.interop import FORMATS, convert, detect, metadata


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    c = sub.add_parser(
        "convert", help="write an SAE folder in another format (saescope, SAELens, ...)"
    )
    c.add_argument("src", help="an SAE folder: saescope's own or a peer library's")
    c.add_argument(
        "--to",
        required=True,
        metavar="FORMAT",
        help=f"the format to write: {', '.join(FORMATS)}",
    )
    c.add_argument("--out", required=True, help="the folder to write (created; files replaced)")
    c.add_argument(
        "--hook",
        help="the hook point: picks one SAE where SRC holds several, and is recorded where "
        "SRC names none",
    )
    return c


def run(ns: argparse.Namespace) -> int:
    source = detect(ns.src)
    out = convert(ns.src, ns.out, ns.to, hook=ns.hook)
    meta = metadata(out)
    where = ", ".join(f"{k}={meta[k]}" for k in ("model_name", "hook_name") if meta.get(k))
    print(f"{ns.src} ({source}) -> {out} ({ns.to}){'; ' + where if where else ''}")
    return 0

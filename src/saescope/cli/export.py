"""`saescope export RUN --features 1,5,9`: chosen features of an indexed run as one
self-contained HTML file (`--html FILE`, opens with no server and no network) and/or as
feature JSON in Neuronpedia's upload layout (`--neuronpedia DIR`, as SAEDashboard writes it)."""

from __future__ import annotations

import argparse

from saescope.analysis import check_features, neuronpedia
from saescope.cli import peer
from saescope.errors import InputError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    e = sub.add_parser(
        "export", help="export features of an indexed run: offline HTML, Neuronpedia JSON"
    )
    e.add_argument("run", help="run folder indexed by saescope index")
    e.add_argument(
        "--features",
        required=True,
        help="feature ids, comma-separated (e.g. 1,5,9; ranges as 10-20), or 'all' "
        "(every feature that fired; Neuronpedia only)",
    )
    e.add_argument("--sae", default=None, help="which SAE of a run with several (sae_0, ...)")
    e.add_argument("--html", default=None, metavar="FILE", help="write one offline HTML file")
    e.add_argument(
        "--neuronpedia", default=None, metavar="DIR", help="write Neuronpedia batch JSON under DIR"
    )
    e.add_argument(
        "--set-name", default=None, help="Neuronpedia SAE set name (default: the run's folder name)"
    )
    e.add_argument("--per-batch", type=int, default=128, help="features per batch file (128)")
    peer.add_args(e)
    return e


def parse_features(text: str, d_sae: int | None = None) -> list[int] | None:
    """'1,5,9' or '10-20' (inclusive) -> ids; 'all' -> None; else a one-line error. With
    `d_sae`, a range's bounds are checked before it is listed (0-1000000000 lists nothing)."""
    if text.strip().lower() == "all":
        return None
    ids: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        lo, dash, hi = part.partition("-")
        try:
            bounds = (int(lo), int(hi)) if dash and lo else (int(part), int(part))
        except ValueError:
            raise InputError(
                f"--features {text!r}: {part!r} is not a feature id; give integers, e.g. 1,5,9"
            ) from None
        if d_sae is not None:
            check_features(bounds, d_sae)
        ids += range(bounds[0], bounds[1] + 1)
    return ids


def run(ns: argparse.Namespace) -> int:
    from saescope.explore import export  # heavy (FastAPI): only when run

    if ns.html is None and ns.neuronpedia is None:
        raise InputError("nothing to write: give --html FILE and/or --neuronpedia DIR")
    if ns.features.strip().lower() == "all" and ns.html is not None:
        raise InputError("--features all is for --neuronpedia only; give ids for --html")
    r = peer.open_run(ns)
    features = parse_features(ns.features, r.sae(ns.sae)[1].cfg.d_sae)
    if ns.html is not None:
        path = export.export_run(r, features or [], ns.html, ns.sae)
        print(f"wrote {path} ({len(set(features or []))} features; open it in a browser)")
    if ns.neuronpedia is not None:
        folder = neuronpedia.export_run(
            r, ns.neuronpedia, features, ns.sae, ns.set_name, ns.per_batch
        )
        print(f"wrote {folder} (Neuronpedia batch files; see docs/EXPORT.md)")
    return 0

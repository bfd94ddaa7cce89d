"""`saescope export RUN --features 1,5,9`: chosen features of an indexed run as one
self-contained HTML file (`--html FILE`, opens with no server and no network) and/or as
feature JSON in Neuronpedia's upload layout (`--neuronpedia DIR`, as SAEDashboard writes it)."""

from __future__ import annotations

import argparse

from saescope.analysis import FeatureIndex
from saescope.analysis.neuronpedia import export_neuronpedia
from saescope.errors import InputError
from saescope.explore.export import export_html
from saescope.runs import Run


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
    return e


def parse_features(text: str) -> list[int] | None:
    """'1,5,9' or '10-20' (inclusive) -> ids; 'all' -> None; else a one-line error."""
    if text.strip().lower() == "all":
        return None
    ids: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        lo, dash, hi = part.partition("-")
        try:
            ids += list(range(int(lo), int(hi) + 1)) if dash and lo else [int(part)]
        except ValueError:
            raise InputError(
                f"--features {text!r}: {part!r} is not a feature id; give integers, e.g. 1,5,9"
            ) from None
    return ids


def run(ns: argparse.Namespace) -> int:
    if ns.html is None and ns.neuronpedia is None:
        raise InputError("nothing to write: give --html FILE and/or --neuronpedia DIR")
    features = parse_features(ns.features)
    if features is None and ns.html is not None:
        raise InputError("--features all is for --neuronpedia only; give ids for --html")
    r = Run.open(ns.run)
    name, sae = r.sae(ns.sae)
    index = FeatureIndex.open(r.path, sae=name if len(r.saes) > 1 else None)
    try:
        if ns.html is not None:
            path = export_html(index, features or [], ns.html, run=r.path.name)
            print(f"wrote {path} ({len(set(features or []))} features; open it in a browser)")
        if ns.neuronpedia is not None:
            dataset = ", ".join(r.data.text or ()) if r.data is not None else ""
            folder = export_neuronpedia(
                index,
                ns.neuronpedia,
                features,
                decoder=sae.W_dec.detach().float(),
                sae_set=ns.set_name or r.path.name,
                dataset=dataset or "saescope default corpus",
                per_batch=ns.per_batch,
            )
            print(f"wrote {folder} (Neuronpedia batch files; see docs/EXPORT.md)")
    finally:
        index.close()
    return 0

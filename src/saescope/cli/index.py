"""`saescope index RUN`: build the feature index of a run's SAE (what `saescope explore` shows:
each feature's density, histogram, top and interval examples, logit tokens, co-firing features
and neighbours) into index.sqlite in the SAE's folder; run again after a kill, it resumes."""

from __future__ import annotations

import argparse
from pathlib import Path

from saescope.analysis import FeatureIndex, IndexConfig, index_run
from saescope.cli import peer
from saescope.runs import Run, hooks_of

TRAIN_HELP = "at the end, build the feature index of each SAE (as saescope index RUN does)"
TOKENS_HELP = (
    "tokens to index, held-out text first, then training text (default 1,000,000; 0: all of it)"
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("index", help="build the feature index of a run (for saescope explore)")
    p.add_argument("run", help="run folder written by saescope train on a model's activations")
    p.add_argument("--tokens", type=int, default=IndexConfig.tokens, help=TOKENS_HELP)
    p.add_argument("--sae", default=None, help="which SAE of a run of several")
    p.add_argument(
        "--batch-size", type=int, default=IndexConfig.batch_size, help="contexts per pass"
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="N",
        help="checkpoint every N batches as well as every minute",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    peer.add_args(p, device=True)
    return p


def run(ns: argparse.Namespace) -> int:
    tokens = None if ns.tokens == 0 else ns.tokens
    cfg = IndexConfig(
        tokens=tokens, batch_size=ns.batch_size, checkpoint_batches=ns.checkpoint_every
    )
    _report(index_run(peer.open_run(ns), ns.sae, cfg, progress=not ns.no_progress))
    return 0


def after_training(ns: argparse.Namespace) -> int:
    """`saescope train ... --index`: index every SAE of the run just trained."""
    if ns.index:
        for hook in hooks_of(ns.out) or [None]:  # each hook point's SAE of a run of several
            run = Run.open(ns.out, hook=hook)
            for name in run.saes:
                _report(index_run(run, name, progress=ns.progress is not False))
    return 0


def _report(path: Path) -> None:
    with FeatureIndex.open(path) as idx:
        info = idx.info
    print(
        f"indexed {info['d_sae']:,} features of {info['sae']} over {info['tokens']:,} tokens "
        f"({info['examples']:,} contexts, {info['set_aside']:,} outlier tokens set aside): {path}"
    )

"""`saescope eval`: the metrics of a trained run, on its held-out data or on other data."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from saescope.cli import options, peer
from saescope.data import ArticleTaskConfig
from saescope.evals import SuiteOptions, parse_suites, run_suites, summary
from saescope.runs import DataSpec, Run
from saescope.text import table

COLUMNS = ["sae", "architecture", "l0", "mse", "explained_variance", "dead_fraction"]
COLUMNS += ["relative_reconstruction_bias"]
EXTRA = ("outliers", "mmcs", "min_feature_cosine", "ce_loss_recovered", "kl_div")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    e = sub.add_parser("eval", help="evaluate a trained SAE")
    e.add_argument("run", help="run folder written by saescope train, or a SAELens SAE folder")
    e.add_argument(
        "--data",
        default=None,
        help="'synthetic', a .npy/.safetensors file or an activation cache folder (its training "
        "rows: held_out false); default: the run's held-out data (a model run's held-out text, "
        "with CE loss recovered; fresh draws of a synthetic task)",
    )
    e.add_argument(
        "--hook",
        default=None,
        help="the cache's hook point (default: the run's); for a peer library's SAE folder "
        "(SAELens), the hook point it reads (default: the one its metadata names)",
    )
    e.add_argument(
        "--target",
        default=None,
        help="a transcoder's target hook: the cache's, or a peer transcoder's (default: its "
        "metadata's hook_name_out)",
    )
    peer.add_args(e, hook=False, device=True)
    e.add_argument("--sae", default=None, help="one SAE of a run of several, a sweep: sae_0, ...")
    e.add_argument("--tokens", type=int, default=65_536, help="tokens to evaluate on")
    e.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="contexts per forward pass of a model (harvest and CE/KL); memory grows with it: "
        "about 2 x batch x context x vocab floats of logits. Default: as many as keep one "
        "pass's logits within 128 MiB, at most 32 (5 for smollm2, 32 for glassllm)",
    )
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--suite", default="core", help="core,probing,absorption (docs/EVALS.md)")
    e.add_argument("--probe-contexts", type=int, default=128, help="probing: contexts per class")
    e.add_argument("--absorption-words", type=int, default=1500, help="absorption: words")
    options.add_config_args(e.add_argument_group("synthetic data options"), ArticleTaskConfig)
    return e


def finite(value: Any) -> Any:
    """NaN and infinities as null: JSON has no such numbers."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run(ns: argparse.Namespace) -> int:
    names = parse_suites(ns.suite)
    need = ns.data in (None, "synthetic") or names != ["core"]  # else a peer's model is not needed
    r = peer.open_run(ns, target=ns.target, need_data=need)
    r = r.only(ns.sae) if ns.sae else r  # one SAE of a sweep (or of any run of several)
    task = options.given(ns, ArticleTaskConfig)
    data = r.eval_data(ns.data, ns.hook, ns.target, task) if "core" in names else None
    if names != ["core"]:
        return suites(ns, r, names, data)
    results = r.evaluate(ns.tokens, data, batch_size=ns.batch_size)
    if ns.json:
        print(json.dumps(finite(next(iter(results.values())) if len(results) == 1 else results)))
        return 0
    rows = [{"sae": k, **v} for k, v in results.items()]
    print(table(rows, COLUMNS + [c for c in EXTRA if c in rows[0]]))
    for row in rows:
        if "with_outliers" in row:
            print(outlier_line(row))
        if "density_plot" in row:
            print(f"feature density histogram: {row['density_plot']}")
    return 0


def outlier_line(row: dict[str, Any]) -> str:
    """What setting outlier tokens aside changed, in one line."""
    every = row["with_outliers"]
    return (
        f"{row['sae']}: {row['outliers']} of {every['n_tokens']} tokens set aside as outliers "
        f"(norm above {row['outlier_factor']:g}x the median); with them: explained variance "
        f"{every['explained_variance']:.4g}, mse {every['mse']:.4g}"
    )


def suites(ns: argparse.Namespace, r: Run, names: list[str], data: DataSpec | None) -> int:
    """Several suites (or one other than core): {suite: {sae: result}}, or a table of each."""
    sizes = (ns.probe_contexts, ns.absorption_words)
    results = run_suites(r, names, SuiteOptions.sized(ns.tokens, data, ns.batch_size, *sizes))
    tables = (f"{name}:\n{summary(name, got)}" for name, got in results.items())
    print(json.dumps(finite(results)) if ns.json else "\n".join(tables))
    return 0

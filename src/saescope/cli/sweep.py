"""`saescope sweep`: architectures x target L0s in one pass, evaluated, tabled and plotted."""

from __future__ import annotations

import argparse
from pathlib import Path
from shlex import quote

from saescope import runs
from saescope.cli import options, train
from saescope.cli.train import BATCH_SIZE
from saescope.data import ArticleTaskConfig
from saescope.errors import ConfigError
from saescope.runs.resume import DATA_OPTIONS, Given
from saescope.saes import ARCHITECTURES
from saescope.text import table
from saescope.training import CHECKPOINT_FILE, TrainConfig

RESUME = "continue a killed sweep in --out from its last checkpoint, then evaluate"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    s = sub.add_parser("sweep", help="train and compare architectures x target L0s in one pass")
    s.add_argument("--arch", help=f"architectures, comma-separated: {', '.join(ARCHITECTURES)}")
    s.add_argument("--target-l0", dest="target_l0", help="target L0s, comma-separated: 16,32,64")
    s.add_argument("--data", help=train.DATA_HELP + " (default: synthetic)")
    s.add_argument("--out", required=True, type=Path, help="sweep folder (runs, table, plots)")
    options.add_model_args(s)
    s.add_argument("--tokens", type=int, help="training tokens (sets --steps from the batch)")
    s.add_argument("--batch-size", type=int, help=f"tokens per batch (default: {BATCH_SIZE})")
    s.add_argument("--d-sae", dest="d_sae", type=int, help="latents (default 8 x d_in)")
    s.add_argument("--eval-tokens", type=int, default=65_536, help="held-out tokens per SAE")
    s.add_argument("--resume", action="store_true", help=RESUME)
    s.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    options.add_config_args(s.add_argument_group("training options"), TrainConfig)
    options.add_config_args(s.add_argument_group("synthetic data options"), ArticleTaskConfig)
    return s


def _given(ns: argparse.Namespace, cfg: dict) -> Given:
    data = {k: getattr(ns, k) for k in DATA_OPTIONS if getattr(ns, k) is not None}
    data["task"] = options.given(ns, ArticleTaskConfig)
    sae = {"d_sae": ns.d_sae} if ns.d_sae is not None else {}
    return Given(None, sae, data, ns.batch_size, ns.tokens, cfg)


def run(ns: argparse.Namespace) -> int:
    from saescope.evals.sweep import SweepPlan, columns, resume_sweep, sweep  # plots: heavy

    cfg = options.given(ns, TrainConfig)
    if ns.tokens is not None and "steps" in cfg:
        raise ConfigError("give --tokens or --steps, not both")
    runs.check_tokens(ns.tokens)
    runs.check_tokens(ns.eval_tokens)
    if ns.resume:
        plan = SweepPlan.parse(ns.arch, ns.target_l0) if ns.arch or ns.target_l0 else None
        given, progress = _given(ns, cfg), cfg.get("progress", True)
        result = resume_sweep(ns.out, plan, given, ns.eval_tokens, progress=progress)
    else:
        plan = SweepPlan.parse(ns.arch or "", ns.target_l0 or "")  # before loading a model
        data = train.data_spec(ns, cfg.get("seed", 0))
        result = sweep(
            plan,
            data,
            ns.out,
            TrainConfig(**cfg),
            ns.tokens,
            ns.batch_size or BATCH_SIZE,
            ns.d_sae,
            ns.overwrite,
            ns.eval_tokens,
        )
    print(table(result.rows, columns(result.rows)))
    for metric, path in result.plots.items():
        print(f"{metric} vs L0: {path}")
    print(f"table: {ns.out / 'sweep.csv'}; each SAE: {ns.out}/sae_N (saescope eval, features, ...)")
    return 0


def interrupted(ns: argparse.Namespace, e: KeyboardInterrupt) -> str:
    """What to say when Ctrl-C or SIGTERM stopped a sweep: how to continue."""
    if not (ns.out / CHECKPOINT_FILE).is_file():
        return "interrupted before the first checkpoint; start the sweep again"
    return f"{e or 'interrupted'}; resume with: saescope sweep --out {quote(str(ns.out))} --resume"

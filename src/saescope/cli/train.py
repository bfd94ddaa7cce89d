"""`saescope train`: an SAE on synthetic data, a file, a cache or a model on the fly."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from saescope.cli import archs, options
from saescope.data import ArticleTaskConfig
from saescope.errors import ConfigError
from saescope.runs import (
    DataSpec,
    build_sae,
    check_tokens,
    passes,
    steps_for_tokens,
    train_run,
)
from saescope.saes import ARCHITECTURES
from saescope.text import table
from saescope.training import TrainConfig, logs

DATA_HELP = (
    "'synthetic' (the seed article's ground-truth task), a .npy/.safetensors file (N, d_in), "
    "or an activation cache folder from saescope harvest (with --hook)"
)

LOG_HELP = "also log the metrics to: tensorboard (RUN/tensorboard; needs saescope[tensorboard])"
KEEP_HELP = "train and evaluate on every token, outliers too (--outlier-factor none)"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    t = sub.add_parser("train", help="train an SAE")
    t.add_argument("--arch", required=True, help=f"architecture: {', '.join(ARCHITECTURES)}")
    t.add_argument("--data", default="synthetic", help=DATA_HELP)
    t.add_argument("--out", required=True, type=Path, help="run folder (metrics, checkpoint, SAE)")
    options.add_model_args(t)
    t.add_argument("--tokens", type=int, help="training tokens (sets --steps from the batch)")
    t.add_argument("--batch-size", type=int, default=1024, help="tokens per batch")
    t.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    t.add_argument("--log", nargs="+", choices=logs.LOGGERS, metavar="NAME", help=LOG_HELP)
    t.add_argument("--d-sae", dest="d_sae", type=int, help="latents (default 8 x d_in)")
    t.add_argument("--keep-outliers", action="store_true", help=KEEP_HELP)
    archs.add_arch_args(t.add_argument_group("architecture options"))
    options.add_config_args(t.add_argument_group("training options"), TrainConfig)
    options.add_config_args(t.add_argument_group("synthetic data options"), ArticleTaskConfig)
    return t


def data_spec(ns: argparse.Namespace, seed: int) -> DataSpec:
    """The data the options name: a model on the fly (--model), else --data."""
    if ns.model:
        if ns.data != "synthetic":
            raise ConfigError("give --model (harvest on the fly) or --data, not both")
        if not ns.hook:
            raise ConfigError("give --hook, the hook point to train on (saescope hooks MODEL)")
        return DataSpec.for_model(ns.model, ns.hook, ns.target, ns.text, ns.context, seed)
    if ns.text:
        raise ConfigError(f"--text applies to --model, not --data {ns.data}")
    task = ArticleTaskConfig(**options.given(ns, ArticleTaskConfig))
    return DataSpec.at(ns.data, ns.hook, ns.target, seed, task)


def run(ns: argparse.Namespace) -> int:
    fields = archs.arch_given(ns, ns.arch)
    if ns.d_sae is not None:
        fields["d_sae"] = ns.d_sae
    given = options.given(ns, TrainConfig)
    if ns.keep_outliers:
        if "outlier_factor" in given:
            raise ConfigError("give --keep-outliers or --outlier-factor, not both")
        given["outlier_factor"] = None
    if ns.tokens is not None and "steps" in given:
        raise ConfigError("give --tokens or --steps, not both")
    check_tokens(ns.tokens)  # before any model is loaded
    log = ns.log or []
    logs.check(log, ns.out)  # before any model is loaded, too
    data = data_spec(ns, given.get("seed", 0))
    stream = data.open(ns.batch_size)
    if ns.tokens is not None:
        given["steps"] = steps_for_tokens(ns.tokens, stream)
    cfg = TrainConfig(**given)
    times = passes(stream, cfg.steps)
    if times is not None and times > 1 and not ns.resume:
        print(
            f"note: {cfg.steps} steps go through {data.describe()} {times:.1f} times; "
            "more data would train on fresh tokens",
            file=sys.stderr,
        )
    torch.manual_seed(cfg.seed)  # --seed fixes the initial weights too
    sae = build_sae(ns.arch, stream, **fields)
    result = train_run(sae, data, stream, cfg, ns.out, ns.resume, ns.overwrite, log)
    cols = ["run", "step", "loss", "l0", "mse", "explained_variance", "dead_fraction"]
    print(table([{"run": str(ns.out), **result.final_metrics[0]}], cols))
    print(f"saved to {ns.out}")
    return 0

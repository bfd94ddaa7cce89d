"""`saescope train`: an SAE on synthetic data, a file, a cache or a model on the fly."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from saescope import runs
from saescope.cli import archs, index, launch, options, train_hooks
from saescope.cli.launch import interrupted as interrupted  # cli.main's
from saescope.cli.options import NONE
from saescope.data import ArticleTaskConfig
from saescope.errors import ConfigError
from saescope.runs.resume import DATA_OPTIONS
from saescope.saes import ARCHITECTURES
from saescope.text import table
from saescope.training import TrainConfig, logs

BATCH_SIZE, CONTEXT = 1024, 128
RESUME_HELP = (
    "continue the run in --out with its recorded settings (options that change the result "
    "must match them; --progress, --log-every, --checkpoint-every/-minutes, --device may not)"
)
DATA_HELP = (
    "'synthetic' (the seed article's ground-truth task), a .npy/.safetensors file (N, d_in), "
    "or an activation cache folder from saescope harvest (with --hook)"
)
LOG = "also log the metrics to: tensorboard (RUN/tensorboard; needs saescope[tensorboard])"
KEEP = "train and evaluate on every token, outliers too (--outlier-factor none)"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    t = sub.add_parser("train", help="train an SAE")
    t.add_argument("--arch", help=f"architecture: {', '.join(ARCHITECTURES)}")
    t.add_argument("--data", help=DATA_HELP + " (default: synthetic)")
    t.add_argument("--out", required=True, type=Path, help="run folder (metrics, checkpoint, SAE)")
    options.add_model_args(t)
    t.add_argument("--tokens", type=int, help="training tokens (sets --steps from the batch)")
    t.add_argument("--batch-size", type=int, help=f"tokens per batch (default: {BATCH_SIZE})")
    t.add_argument("--resume", action="store_true", help=RESUME_HELP)
    t.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    t.add_argument("--index", action="store_true", help=index.TRAIN_HELP)
    t.add_argument("--log", nargs="+", choices=logs.LOGGERS, metavar="NAME", default=[], help=LOG)
    t.add_argument("--d-sae", dest="d_sae", type=int, help="latents (default 8 x d_in)")
    keep = {"dest": "outlier_factor", "action": "store_const", "const": NONE, "help": KEEP}
    t.add_argument("--keep-outliers", **keep)
    launch.add_args(t)
    archs.add_arch_args(t.add_argument_group("architecture options"))
    options.add_config_args(t.add_argument_group("training options"), TrainConfig)
    options.add_config_args(t.add_argument_group("synthetic data options"), ArticleTaskConfig)
    return t


def data_spec(ns: argparse.Namespace, seed: int) -> runs.DataSpec:
    """The data the options name: a model on the fly (--model), else --data."""
    if ns.model:
        if ns.data is not None:
            raise ConfigError("give --model (harvest on the fly) or --data, not both")
        if not ns.hook:
            raise ConfigError("give --hook, the hook point to train on (saescope hooks MODEL)")
        context = CONTEXT if ns.context is None else ns.context
        return runs.DataSpec.for_model(ns.model, ns.hook, ns.target, ns.text, context, seed)
    if ns.text:
        raise ConfigError(f"--text applies to --model, not --data {ns.data}")
    task = ArticleTaskConfig(**options.given(ns, ArticleTaskConfig))
    return runs.DataSpec.at(ns.data or "synthetic", ns.hook, ns.target, seed, task)


def asked(ns: argparse.Namespace, train: dict) -> runs.Given:
    """What the command line names, for a run to resume (which checks it)."""
    data = {k: getattr(ns, k) for k in DATA_OPTIONS if getattr(ns, k) is not None}
    data["task"] = options.given(ns, ArticleTaskConfig)
    return runs.Given(ns.arch, archs.all_given(ns), data, ns.batch_size, ns.tokens, train)


def run(ns: argparse.Namespace) -> int:
    train = options.given(ns, TrainConfig)
    if ns.tokens is not None and "steps" in train:
        raise ConfigError("give --tokens or --steps, not both")
    runs.check_tokens(ns.tokens)  # before any model is loaded
    logs.check(ns.log, ns.out)  # before any model is loaded, too
    if not (ns.resume or ns.arch):
        raise ConfigError(f"give --arch ({', '.join(ARCHITECTURES)}), or --resume a run")
    apart = train_hooks.wanted(ns)  # several hook points (or --parallel layers) train apart
    with launch.joined(ns, train) as group:  # torchrun's processes (None: this one alone)
        if apart:
            rows = train_hooks.run(ns, train, group, data_spec, asked(ns, train))
        elif ns.resume:
            result = runs.resume_run(ns.out, asked(ns, train), ns.log, group)
        else:
            fields = archs.arch_given(ns, ns.arch)
            data = data_spec(ns, train.get("seed", 0))
            stream = data.open(ns.batch_size or BATCH_SIZE)
            if ns.tokens is not None:
                train["steps"] = runs.steps_for_tokens(ns.tokens, stream)
            cfg = TrainConfig(**train)
            if (note := runs.passes_note(data, stream, cfg.steps)) and launch.speaks(group):
                print(note)  # stdout: stderr is for errors and warnings, one line each
            torch.manual_seed(cfg.seed)  # --seed fixes the initial weights too
            sae = runs.build_sae(ns.arch, stream, **fields)
            over = ns.overwrite
            result = runs.train_run(sae, data, stream, cfg, ns.out, False, over, ns.log, group)
    if not launch.speaks(group):
        return 0
    cols = ["run", "step", "loss", "l0", "mse", "explained_variance", "dead_fraction"]
    print(table(rows if apart else [{"run": str(ns.out), **result.final_metrics[0]}], cols))
    print(f"saved to {ns.out}")
    return index.after_training(ns)

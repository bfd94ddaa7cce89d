"""`saescope train --hook a,b,c`: one SAE per hook point in one pass over the model (or a
cache), one subfolder each (`runs.layers`); `--parallel layers` spreads them over torchrun's
ranks."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from saescope import runs
from saescope.cli import archs
from saescope.errors import ConfigError
from saescope.runs import DataSpec
from saescope.runs.resume import Given
from saescope.training import TrainConfig

BATCH_SIZE = 1024
"""Tokens per batch when --batch-size is not given (as saescope train's)."""


def wanted(ns: argparse.Namespace) -> bool:
    """Whether the command trains hook points apart (several, or --parallel layers); sets
    --parallel layers for them (ddp and latents, which train one SAE, are refused)."""
    several = bool(ns.hook and "," in ns.hook) or (ns.resume and runs.is_layered(ns.out))
    if not (several or ns.parallel == "layers"):
        return False
    if ns.parallel == "ddp":
        raise ConfigError("several hook points train with --parallel layers, not ddp")
    if ns.parallel == "latents":
        raise ConfigError("--parallel latents trains one SAE; give one --hook")
    ns.parallel = "layers"
    return True


def run(
    ns: argparse.Namespace,
    train: dict[str, Any],
    group: Any,
    data_spec: Callable[[argparse.Namespace, int], DataSpec],
    given: Given,
) -> list[dict[str, Any]]:
    """Train (or resume) the run; its final metrics, one row per hook point."""
    if ns.resume:
        runs.resume_hooks(ns.out, given, ns.log, group)
    else:
        fields = archs.arch_given(ns, ns.arch)
        datas = runs.hook_specs(data_spec(ns, train.get("seed", 0)), runs.parse_hooks(ns.hook))
        streams = [d.open(ns.batch_size or BATCH_SIZE) for d in datas]
        if ns.tokens is not None:
            train["steps"] = runs.steps_for_tokens(ns.tokens, streams[0])
        cfg = TrainConfig(**train)
        # this rank's SAEs only, each as `saescope train --hook H` makes it
        build = lambda j: runs.build_sae(ns.arch, streams[j], **fields)  # noqa: E731
        saes = runs.build_owned(len(streams), group, cfg.seed, build)
        runs.train_hooks(saes, datas, streams, cfg, ns.out, False, ns.overwrite, ns.log, group)
    if group is not None and group.rank != 0:
        return []  # rank 0 prints the summary
    return [{"run": f"{ns.out} {h}", **m} for h, m in runs.final_metrics(ns.out).items()]

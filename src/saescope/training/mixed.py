"""A run's precision (`TrainConfig.precision`, `saescope.precision`): settled once when the
run starts (auto resolved, a resumed run keeping what it recorded), then applied to the SAEs'
encoder products and to a model's forward on the fly while the loop runs."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

from saescope import lowp, precision
from saescope.saes import SAE
from saescope.training.checkpoint import read_meta
from saescope.training.config import TrainConfig


def settle(
    cfg: TrainConfig, out_dir: str | Path | None, resume: bool, rank: int = 0
) -> TrainConfig:
    """cfg with its precision fp32 or bf16. auto: a resumed run's recorded precision (fp32
    for a run recorded before there was one), else what `precision.resolve` picks here. With
    cfg.progress, rank 0 prints the one line saying what and why."""
    name, speak = cfg.precision, cfg.progress and rank == 0
    if name == "auto" and resume and out_dir is not None:
        meta = read_meta(out_dir)
        if meta is not None:
            kept = meta["train"].get("precision", "fp32")
            choice = precision.Choice(kept, "kept: the precision the run recorded")
            return _said(cfg, choice, speak)
    choice = precision.resolve(name, cfg.device)
    precision.warn_slow(choice)
    return _said(cfg, choice, speak)


def _said(cfg: TrainConfig, choice: precision.Choice, speak: bool) -> TrainConfig:
    if speak:
        print(choice.line())
    return dataclasses.replace(cfg, precision=choice.name)


@contextlib.contextmanager
def applied(saes: SAE | Sequence[SAE], cfg: TrainConfig) -> Iterator[list[SAE]]:
    """Within the block (which gets the SAEs as a list) their encoder products and models'
    forward passes run at cfg.precision (settled); afterwards the SAEs are back to fp32 and
    the bf16 copies freed."""
    saes = [saes] if isinstance(saes, SAE) else list(saes)
    for sae in saes:
        sae.precision = cfg.precision
    try:
        with precision.model_precision(cfg.precision):
            yield saes
    finally:
        for sae in saes:
            sae.precision = "fp32"
        lowp.release_copies()

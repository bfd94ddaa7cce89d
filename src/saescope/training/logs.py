"""The training metrics: each logged step's row per SAE (`log_row`, `write_rows`: into
`metrics.jsonl`, always written, and the progress bar), and where else they go: optional loggers
named by `train(..., log=["tensorboard"])` or `saescope train --log tensorboard`, each with
`write(row)` (one logged row of one SAE) and `close()`.

The choice of loggers is not a training setting: it changes no weight, so it is not part of
`TrainConfig`, is not saved in the checkpoint, and a run may be resumed with other loggers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saescope import metrics
from saescope.errors import ConfigError
from saescope.saes import LossOutput
from saescope.training.checkpoint import Position
from saescope.training.group import Share
from saescope.training.optim import Slot

LOGGERS = ("tensorboard",)
"""The loggers `train(log=...)` takes."""
TENSORBOARD_DIR = "tensorboard"
"""The folder of a run (out_dir) that holds its TensorBoard event files."""


class MetricsLog(Protocol):
    def write(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def check(names: Sequence[str], out_dir: str | Path | None) -> None:
    """Refuse, before training starts, a logger that is unknown, has no out_dir to write to,
    or whose package is not installed."""
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"unknown logger {name!r}; choose from {', '.join(LOGGERS)}")
        if out_dir is None:
            raise ConfigError(f"log={name!r} writes into the run folder; give out_dir")
    if "tensorboard" in names:
        _summary_writer()


def _summary_writer() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "--log tensorboard needs the tensorboard package: pip install saescope[tensorboard]"
        ) from None
    return SummaryWriter


class TensorBoardLog:
    """Every number of each logged row as a TensorBoard scalar at its step, in
    out_dir/tensorboard (one SAE) or out_dir/tensorboard/sae_i (several: TensorBoard shows
    them as runs side by side, each metric in one chart). Opened at `start_step` (the steps
    done: the checkpoint's on resume), it purges what an interrupted run had logged after that
    step, so a resumed run's curves do not double back (and a fresh run in an overwritten
    folder starts clean)."""

    def __init__(self, out_dir: str | Path, n_saes: int, start_step: int = 0) -> None:
        writer = _summary_writer()
        root = Path(out_dir) / TENSORBOARD_DIR
        dirs = [root] if n_saes == 1 else [root / f"sae_{i}" for i in range(n_saes)]
        # The first step logged from here is start_step + 1: TensorBoard drops older events
        # from that step on when it reads the new file's start marker.
        self.writers = [writer(str(d), purge_step=start_step + 1) for d in dirs]

    def write(self, row: dict[str, Any]) -> None:
        w = self.writers[row.get("sae", 0)]
        for key, value in row.items():
            if key not in ("step", "sae") and _number(value):
                w.add_scalar(key, value, row["step"])
        w.flush()

    def close(self) -> None:
        for w in self.writers:
            w.close()


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def open_logs(
    names: Sequence[str], out_dir: Path | None, n_saes: int, start_step: int
) -> list[MetricsLog]:
    """The loggers named (each once), opened for a run of n_saes SAEs starting at start_step."""
    check(names, out_dir)
    if out_dir is None:
        return []
    return [_OPEN[n](out_dir, n_saes, start_step) for n in dict.fromkeys(names)]


_OPEN = {"tensorboard": TensorBoardLog}


# ----- the rows --------------------------------------------------------------------------------


@torch.no_grad()
def log_row(
    slot: Slot, y: Tensor, out: LossOutput, pos: Position, share: Share | None = None
) -> dict[str, Any]:
    """One SAE's metrics on the step's batch (the whole batch's, with `share`: data
    parallel). The loss terms are in the normalised units the SAE trains in; `mse` (summed
    over dimensions, mean over tokens) is in the data's own units, as `saescope eval` reports
    it, and explained variance has no units."""
    y_n = y * slot.scale_out
    row: dict[str, Any] = {"step": pos.step, "tokens": pos.tokens}
    row.update({f"loss_{k}": float(v) for k, v in out.terms.items()})
    row["loss"] = float(out.total)
    if share is None:
        l0, mse = out.l0(), metrics.mse(y_n, out.y_hat)
        ev = metrics.explained_variance(y_n, out.y_hat)
    else:
        l0, mse, ev = share.batch_metrics(y_n, out)
    row["l0"], row["mse"], row["explained_variance"] = l0, mse / slot.scale_out**2, ev
    row["dead_fraction"] = float(slot.dead(pos.dead_tokens).float().mean())
    row["outliers"] = pos.set_aside
    return row


class Clock:
    """Wall time of the run (carried over a resume) and throughput between log rows."""

    def __init__(self, pos: Position) -> None:
        self.start, self.before = time.perf_counter(), pos.elapsed
        self.last_t, self.last_tokens = self.start, pos.tokens

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.start

    def fields(self, pos: Position) -> dict[str, float]:
        now = time.perf_counter()
        rate = (pos.tokens - self.last_tokens) / max(now - self.last_t, 1e-9)
        self.last_t, self.last_tokens = now, pos.tokens
        return {"elapsed_s": round(self.elapsed(), 3), "tokens_per_s": round(rate, 1)}


def write_rows(
    slots: Sequence[Slot],
    outs: Sequence[LossOutput],
    y: Tensor,
    pos: Position,
    log_file: Any,
    bar: tqdm,
    clock: Clock,
    loggers: Sequence[MetricsLog] = (),
    share: Share | None = None,
) -> None:
    """Each SAE's row into metrics.jsonl (log_file: None on ranks other than 0) and the
    loggers, and the progress bar's numbers."""
    timing = clock.fields(pos)
    for i, (s, out) in enumerate(zip(slots, outs, strict=True)):
        s.last_log = {"sae": i, **log_row(s, y, out, pos, share), **timing}
        if log_file:
            log_file.write(json.dumps(s.last_log) + "\n")
        for logger in loggers:
            logger.write(s.last_log)
    if log_file:
        log_file.flush()
    head = slots[0].last_log or {}
    bar.set_postfix(
        loss=f"{head.get('loss', 0):.4g}",
        l0=f"{head.get('l0', 0):.3g}",
        ev=f"{head.get('explained_variance', 0):.3f}",
    )

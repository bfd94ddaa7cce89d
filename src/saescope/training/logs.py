"""Where the training metrics go besides `metrics.jsonl` (always written): optional loggers
named by `train(..., log=["tensorboard"])` or `saescope train --log tensorboard`, each with
`write(row)` (one logged row of one SAE) and `close()`.

The choice of loggers is not a training setting: it changes no weight, so it is not part of
`TrainConfig`, is not saved in the checkpoint, and a run may be resumed with other loggers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from saescope.errors import ConfigError

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

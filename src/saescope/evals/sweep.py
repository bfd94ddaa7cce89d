"""A sweep: several architectures x several target L0s trained in one pass over one batch
stream (each batch read once, a model harvested once per batch: `training.train` takes them
all), then each SAE evaluated on the run's held-out data, and the results written as a table
(`sweep.csv`, `sweep.md`) and Pareto plots (`evals.pareto`: explained variance vs L0 and, for
a model run, CE loss recovered vs L0, dead fraction beside each).

The sweep folder is a saescope run of several SAEs (`sae_0`, `sae_1`, ..., in plan order:
architecture-major), so every command opens it, or one SAE's folder, as it opens any run;
its checkpoint holds all of them, so a killed sweep resumes (`resume_sweep`)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from saescope.atomic import atomic_write_bytes
from saescope.errors import ConfigError
from saescope.evals.pareto import has_metric, pareto_figure
from saescope.report import save_figure
from saescope.runs import (
    DataSpec,
    Given,
    Recorded,
    Run,
    build_sae,
    resume_run,
    steps_for_tokens,
    train_run,
)
from saescope.saes import ARCHITECTURES
from saescope.training import TrainConfig

SWEEP_FILE = "sweep.json"
TABLE_FILE = "sweep.csv"
COLUMNS = ["sae", "architecture", "target_l0", "l0", "explained_variance", "dead_fraction"]
COLUMNS += ["mse", "ce_loss_recovered", "mmcs", "held_out"]
PLOTS = {"explained_variance": "pareto_explained_variance.png"}
PLOTS["ce_loss_recovered"] = "pareto_ce_loss_recovered.png"


def _number(text: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--target-l0 takes numbers separated by commas, got {text!r}") from None
    return int(value) if value.is_integer() else value


def _split(values: str | Sequence[Any]) -> list[str]:
    parts = values.split(",") if isinstance(values, str) else [str(v) for v in values]
    return [p.strip() for p in parts if p.strip()]


@dataclass(frozen=True)
class SweepPlan:
    """The architectures and target L0s of a sweep: every pair is one SAE."""

    archs: tuple[str, ...]
    targets: tuple[float | int, ...]

    @classmethod
    def parse(cls, archs: str | Sequence[str], targets: str | Sequence[float]) -> SweepPlan:
        """From "topk,relu" and "16,32" (or lists), checked: known architectures, positive
        targets, no duplicates (each a one-line error)."""
        names, numbers = _split(archs), [_number(t) for t in _split(targets)]
        if not names:
            raise ConfigError(f"give --arch, one or more of {', '.join(ARCHITECTURES)}")
        if not numbers:
            raise ConfigError("give --target-l0, one or more target L0s (e.g. 16,32,64)")
        unknown = [a for a in names if a not in ARCHITECTURES]
        if unknown:
            raise ConfigError(
                f"unknown architecture {', '.join(map(repr, unknown))}; known: "
                f"{', '.join(ARCHITECTURES)}"
            )
        for what, values in (("--arch", names), ("--target-l0", numbers)):
            twice = sorted({str(v) for v in values if values.count(v) > 1})
            if twice:
                raise ConfigError(f"{what} names {', '.join(twice)} more than once; give each once")
        bad = [t for t in numbers if not t > 0]
        if bad:
            raise ConfigError(f"a target L0 must be above 0, got {bad[0]}")
        return cls(tuple(names), tuple(numbers))

    @property
    def pairs(self) -> list[tuple[str, float | int]]:
        """(architecture, target L0) of each SAE, architecture-major: sae_i is pairs[i]."""
        return [(a, t) for a in self.archs for t in self.targets]

    def check(self, d_sae: int) -> None:
        """Every target below d_sae (a one-line error naming the largest allowed)."""
        over = [t for t in self.targets if t >= d_sae]
        if over:
            raise ConfigError(
                f"target L0 {over[0]} is not below d_sae={d_sae}; give targets under "
                f"{d_sae} or a larger --d-sae"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"archs": list(self.archs), "targets": list(self.targets)}


@dataclass
class SweepResult:
    """A finished sweep: its folder, one row per SAE (plan order) and the plots written."""

    out: Path
    rows: list[dict[str, Any]]
    plots: dict[str, Path] = field(default_factory=dict)


def sweep(
    plan: SweepPlan,
    data: DataSpec,
    out: str | Path,
    cfg: TrainConfig | None = None,
    tokens: int | None = None,
    batch_size: int = 1024,
    d_sae: int | None = None,
    overwrite: bool = False,
    eval_tokens: int = 65_536,
    eval_batch_size: int | None = None,
) -> SweepResult:
    """Train every (architecture, target L0) pair of `plan` on `data` in one pass (each SAE
    with `target_l0` set; `tokens` sets the steps, else `cfg.steps`), then evaluate each on
    the run's held-out data and write the table and the Pareto plots into `out`."""
    cfg = cfg or TrainConfig()
    stream = data.open(batch_size)
    if tokens is not None:
        cfg = dataclasses.replace(cfg, steps=steps_for_tokens(tokens, stream))
    plan.check(d_sae or 8 * stream.d_in)
    torch.manual_seed(cfg.seed)  # the initial weights follow the seed
    extra = {} if d_sae is None else {"d_sae": d_sae}
    saes = [build_sae(a, stream, target_l0=t, **extra) for a, t in plan.pairs]
    train_run(saes, data, stream, cfg, out, False, overwrite)
    return evaluate_sweep(out, eval_tokens, eval_batch_size, cfg.progress)


def recorded_plan(out: str | Path) -> SweepPlan:
    """The plan a sweep folder's checkpoint records (from its SAEs' configs)."""
    saes = Recorded.read(out).saes
    archs = list(dict.fromkeys(s["architecture"] for s in saes))
    targets = list(dict.fromkeys(s.get("target_l0") for s in saes))
    if None in targets or len(saes) != len(archs) * len(targets):
        raise ConfigError(f"{out} holds a run of several SAEs, not a sweep; resume it with train")
    return SweepPlan(tuple(archs), tuple(targets))


def resume_sweep(
    out: str | Path,
    plan: SweepPlan | None = None,
    given: Given | None = None,
    eval_tokens: int = 65_536,
    eval_batch_size: int | None = None,
    progress: bool = True,
) -> SweepResult:
    """Continue a killed sweep from its last checkpoint (the settings it recorded; a `plan`
    or `given` settings must be its own), then evaluate and write as `sweep` does. A sweep
    killed while evaluating resumes at once to the evaluation."""
    ours = recorded_plan(out)
    if plan is not None and plan != ours:
        raise ConfigError(
            f"{out} is a sweep of {','.join(ours.archs)} at target L0 "
            f"{','.join(map(str, ours.targets))}; resume it with those (or drop --arch and "
            "--target-l0)"
        )
    resume_run(out, given)
    return evaluate_sweep(out, eval_tokens, eval_batch_size, progress)


def evaluate_sweep(
    out: str | Path,
    tokens: int = 65_536,
    batch_size: int | None = None,
    progress: bool = True,
) -> SweepResult:
    """Evaluate every SAE of a trained sweep folder on its held-out data (CE loss recovered
    too, for a model run; for a file, which has none, its first rows) and write `sweep.csv`,
    `sweep.md`, `sweep.json` and the plots."""
    run = Run.open(out)
    names = sorted(run.saes, key=_index)
    # a file has no held-out part: its first rows (training rows; the table says held_out)
    data = run.data if run.data is not None and run.data.kind == "file" else None
    rows = []
    for name in tqdm(names, desc="evaluate", unit="sae", disable=not progress):
        got = run.only(name).evaluate(tokens, data, batch_size=batch_size)[name]
        rows.append({"sae": name, **_row(run.saes[name].cfg, got)})
        if data is not None:
            rows[-1]["held_out"] = False
    return write_sweep(Path(out), rows)


def _index(name: str) -> int:
    tail = name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _row(cfg: Any, got: dict[str, Any]) -> dict[str, Any]:
    row = {"architecture": cfg.name, "target_l0": cfg.target_l0}
    row.update({c: got[c] for c in COLUMNS[3:] if c in got})
    coef = cfg.sparsity_coef
    if coef is not None and cfg.target_l0 is not None:
        row["coefficient"] = f"{coef}={getattr(cfg, coef):.4g}"
    return row


def write_sweep(out: Path, rows: list[dict[str, Any]]) -> SweepResult:
    """The table (csv and markdown), a summary (`sweep.json`) and the Pareto plots of the
    rows, into `out`."""
    cols = columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / TABLE_FILE, buf.getvalue().encode())
    atomic_write_bytes(out / "sweep.md", (markdown(rows, cols) + "\n").encode())
    plots = {}
    for metric, file in PLOTS.items():
        if has_metric(rows, metric):
            plots[metric] = save_figure(pareto_figure(rows, metric), out / file)
    summary = {"rows": rows, "plots": {k: p.name for k, p in plots.items()}}
    atomic_write_bytes(out / SWEEP_FILE, json.dumps(_finite(summary), indent=2).encode())
    return SweepResult(out, rows, plots)


def columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The table's columns that some row has, in `COLUMNS` order, then the coefficient."""
    have = {k for r in rows for k in r}
    return [c for c in [*COLUMNS, "coefficient"] if c in have]


def markdown(rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> str:
    """The rows as a markdown table (numbers to 4 significant digits)."""

    def cell(v: Any) -> str:
        return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value

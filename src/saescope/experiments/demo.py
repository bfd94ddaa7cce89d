"""`saescope demo` / `make demo`: every architecture trained on the seed's ground-truth recipe
(true unit features, each sample a sum of 1-3 of them with coefficients U(0.5, 2)), all five
SAEs in one pass, then evaluated on held-out samples against the true features.

Two settings. The seed's own (8 features in 4-D): every SAE reaches the true L0 of 2, but no
linear-threshold encoder can tell 8 directions in 4-D apart, so the learned directions tilt
away from the truth (the truth is not the loss minimum; tests/test_recovery.py shows it).
Then the same recipe with room to separate the features (40 in 32-D): relu, topk, batchtopk
and jumprelu recover every feature at cosine >= 0.99; gated gets to 0.97-0.99 (a feature
split over two latents resolves slowly; docs/RESULTS.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from saescope.data import SeedTask, SeedTaskConfig
from saescope.data.stream import HELD_OUT_SEED_OFFSET
from saescope.evaluate import evaluate
from saescope.saes import make_sae
from saescope.text import table
from saescope.train import TrainConfig, train


@dataclass(frozen=True)
class DemoTask:
    """One ground-truth setting and the SAEs trained on it."""

    name: str
    task: SeedTaskConfig
    saes: tuple[dict[str, Any], ...]
    train: TrainConfig


SEED_TASK = DemoTask(
    "seed",
    SeedTaskConfig(d_in=4, n_features=8),
    (
        {"architecture": "relu", "d_sae": 8, "l1_coef": 1.0},
        {"architecture": "topk", "d_sae": 8, "k": 2},
        {"architecture": "batchtopk", "d_sae": 8, "k": 2},
        {"architecture": "gated", "d_sae": 8, "l1_coef": 1.0},
        {"architecture": "jumprelu", "d_sae": 8, "l0_coef": 0.3},
    ),
    TrainConfig(steps=3000),
)

SEPARABLE_TASK = DemoTask(
    "separable",
    SeedTaskConfig(d_in=32, n_features=40),
    (
        {"architecture": "relu", "d_sae": 60, "l1_coef": 4.0},
        {"architecture": "topk", "d_sae": 60, "k": 2},
        {"architecture": "batchtopk", "d_sae": 60, "k": 2, "aux_coef": 0.5},
        {"architecture": "gated", "d_sae": 60, "l1_coef": 3.0},
        {"architecture": "jumprelu", "d_sae": 60, "l0_coef": 1.0},
    ),
    TrainConfig(steps=3000, lr_decay_start=0.5),
)

COLUMNS = [
    "architecture",
    "l0",
    "explained_variance",
    "min_feature_cosine",
    "mmcs",
    "relative_reconstruction_bias",
    "dead_fraction",
]


def run_task(
    spec: DemoTask, out: Path | None, seed: int = 0, progress: bool = True, steps: int | None = None
) -> list[dict[str, Any]]:
    """Train the spec's SAEs together on its task and evaluate them on held-out samples."""
    task_cfg = SeedTaskConfig(**{**asdict(spec.task), "feature_seed": seed})
    task = SeedTask(task_cfg, batch_size=1024, seed=seed)
    saes = []
    for i, c in enumerate(spec.saes):
        torch.manual_seed(seed * 1000 + i)  # each SAE's init is independent of the others
        saes.append(make_sae({"d_in": task_cfg.d_in, **c}))
    cfg = TrainConfig(
        **{
            **asdict(spec.train),
            "seed": seed,
            "progress": progress,
            **({"steps": steps} if steps else {}),
        }
    )
    meta = {"data": {"kind": "synthetic", "task": asdict(task_cfg), "seed": seed}}
    result = train(saes, task, cfg, out, metadata=meta, overwrite=True)
    held_out = SeedTask(task_cfg, batch_size=8192, seed=seed + HELD_OUT_SEED_OFFSET)
    return [evaluate(s, held_out, 32_768, features=task.features) for s in result.saes]


def run(out: Path, steps: int | None = None, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    results = {}
    for spec in (SEED_TASK, SEPARABLE_TASK):
        t = spec.task
        print(
            f"\n== {spec.name}: {t.n_features} true features in {t.d_in}-D, "
            f"{t.min_active}-{t.max_active} active per sample (true mean L0 {t.mean_active}) =="
        )
        rows = run_task(spec, out / spec.name, seed, steps=steps)
        print(table(rows, COLUMNS))
        results[spec.name] = rows
    print(
        "\nmin_feature_cosine: best-match cosine of the worst-recovered true feature.\n"
        "In 4-D the 8 features overlap too much for any linear-threshold encoder to separate,\n"
        "so even the best SAE tilts its directions (see docs/RESULTS.md). With room to separate\n"
        "them, the directions come out right (gated converges slowest).\n"
        f"SAEs saved under {out}/."
    )
    (out / "demo.json").write_text(json.dumps(results, indent=2))
    return results

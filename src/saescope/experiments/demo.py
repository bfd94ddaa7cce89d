"""`saescope demo` / `make demo`: every architecture trained on the seed's ground-truth task
(8 unit features in 4-D, 1-3 active, coefficients U(0.5, 2)) in one pass, then evaluated on
held-out samples against the true features. Prints a table; saves the SAEs under `out`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from saescope.data import SeedTask, SeedTaskConfig
from saescope.evaluate import evaluate
from saescope.saes import make_sae
from saescope.text import table
from saescope.train import TrainConfig, train

# One config per architecture, all at the task's true mean L0 of 2.
DEMO_SAES: list[dict[str, Any]] = [
    {"architecture": "relu", "d_sae": 8, "l1_coef": 0.6},
    {"architecture": "topk", "d_sae": 8, "k": 2},
    {"architecture": "batchtopk", "d_sae": 8, "k": 2},
    {"architecture": "gated", "d_sae": 8, "l1_coef": 0.6},
    {"architecture": "jumprelu", "d_sae": 8, "l0_coef": 0.3},
]
DEMO_STEPS = 3000
COLUMNS = [
    "architecture",
    "l0",
    "explained_variance",
    "mmcs",
    "min_feature_cosine",
    "relative_reconstruction_bias",
    "dead_fraction",
]


def run(out: Path, steps: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    torch.manual_seed(seed)
    task = SeedTask(SeedTaskConfig(), batch_size=1024, seed=seed)
    saes = [make_sae({"d_in": task.cfg.d_in, **c}) for c in DEMO_SAES]
    print(
        f"Training {len(saes)} SAEs on the seed's task: {task.cfg.n_features} true features "
        f"in {task.cfg.d_in}-D, {task.cfg.min_active}-{task.cfg.max_active} active per sample."
    )
    result = train(
        saes,
        task,
        TrainConfig(steps=steps or DEMO_STEPS, seed=seed),
        out,
        metadata={"data": {"kind": "synthetic", "task": vars(task.cfg), "seed": seed}},
        overwrite=True,
    )
    held_out = SeedTask(task.cfg, batch_size=8192, seed=seed + 1_000_003)
    rows = [evaluate(s, held_out, 32_768, features=held_out.features) for s in result.saes]
    print(table(rows, COLUMNS))
    print(f"True mean L0: {task.cfg.mean_active}. SAEs saved under {out}/sae_*.")
    (out / "demo.json").write_text(json.dumps(rows, indent=2))
    return rows

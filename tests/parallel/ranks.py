"""The data-parallel tests' training runs (tests/parallel/test_ddp.py), one rank per process.

`python tests/parallel/ranks.py DATA OUT` with torchrun's variables (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT) trains every case of CASES on its share of each batch, rank 0 saving
each SAE into OUT/<case>; without them (or `train_all` in-process), one process trains the same
cases on the whole batches. DATA holds the file and the cache `write_data` made.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from saescope import parallel
from saescope.activations import ModelBatches
from saescope.data import ActivationCache
from saescope.data.cache import CacheBatches, CacheWriter
from saescope.data.files import ActivationFile
from saescope.data.stream import IndexedBatches
from saescope.models import load_model
from saescope.runs import DataSpec, train_run
from saescope.saes import make_sae
from saescope.training import TrainConfig

D_IN, D_SAE, BATCH, STEPS = 16, 64, 256, 12
ARCHS = {
    "topk": {"k": 4},
    "batchtopk": {"k": 4},
    "relu": {"l1_coef": 1.0},
    "jumprelu": {},
    "matryoshka": {"k": 4},
    "gated": {},
}
CASES = [f"{a}-file" for a in ARCHS] + [f"{a}-cache" for a in list(ARCHS)[:4]]
CASES += ["batchtopk-sparse", "matryoshka-sparse", "topk-model"]
HOOK = "blocks.0"


def write_data(root: Path, rows: int = 4096, seed: int = 0) -> None:
    """A .npy file and a cache of the same kind of rows: a low-rank signal, noise, a mean
    offset, and a few rows 40x longer than the rest (outlier tokens, set aside in training)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(8, D_IN, generator=g)
    x = torch.randn(rows, 8, generator=g).relu() @ basis + 0.1 * torch.randn(
        rows, D_IN, generator=g
    )
    x += 2.0
    x[torch.randperm(rows, generator=g)[:12]] *= 40
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "acts.npy", x.numpy())
    writer = CacheWriter(root / "cache", {"model": "test", "hooks": [HOOK]}, shard_contexts=16)
    per = 32  # rows per context
    for c in range(0, rows // per, 8):
        part = x[c * per : (c + 8) * per]
        n = part.shape[0]
        writer.add(
            {
                HOOK: part,
                "tokens": torch.zeros(n, dtype=torch.long),
                "positions": torch.arange(n) % per + 1,
                "contexts": torch.arange(n) // per + c,
            },
            8,
        )
    writer.flush()


def stream(case: str, data: Path) -> IndexedBatches:
    source = case.split("-")[1]
    if source == "cache":
        return CacheBatches(ActivationCache(data / "cache"), HOOK, batch_size=BATCH, seed=1)
    if source == "model":  # glassllm on the fly, on contexts of random tokens (no text)
        model = load_model("glassllm")[0]
        ids = torch.randint(
            model.embed.num_embeddings, (64, 33), generator=torch.Generator().manual_seed(2)
        )
        return ModelBatches(model, ids, "layers.1", batch_size=BATCH, seed=1)
    return ActivationFile(data / "acts.npy", batch_size=BATCH, seed=1)


def config() -> TrainConfig:
    return TrainConfig(
        steps=STEPS,
        lr=3e-3,
        init_samples=600,
        log_every=4,
        checkpoint_every=0,
        checkpoint_minutes=0,
        progress=False,
    )


def train_case(case: str, data: Path, out: Path | None, group: parallel.DDPGroup | None):
    arch = case.split("-")[0]
    batches = stream(case, data)
    torch.manual_seed(0)
    sae = make_sae({"architecture": arch, "d_in": batches.d_in, "d_sae": D_SAE, **ARCHS[arch]})
    if case.endswith("-sparse"):
        sae.sparse_mode = "sparse"
    spec = DataSpec.at(data / "acts.npy")  # recorded only
    return train_run(sae, spec, batches, config(), out, group=group)


def train_all(data: Path, out: Path | None, group: parallel.DDPGroup | None = None) -> dict:
    """Each case's final SAE (taking raw activations) and final metrics; saved in out/<case>
    by rank 0."""
    results = {c: train_case(c, data, out / c if out else None, group) for c in CASES}
    return {c: (r.saes[0].state_dict(), r.final_metrics[0]) for c, r in results.items()}


if __name__ == "__main__":
    torch.set_num_threads(1)
    data_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    with parallel.launched("ddp", timeout=30) as grp:
        train_all(data_dir, out_dir, grp)

"""The layers-mode tests' training runs (tests/parallel/test_layers.py), one rank per process.

`python tests/parallel/layer_ranks.py OUT` with torchrun's variables trains one SAE per hook
point of glassllm with `--parallel layers` (the SAEs spread over the ranks, the activations
exchanged) into OUT/<case>; `alone(case)` trains each hook point's SAE by itself in one
process on the same global batches, to compare with.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from saescope import parallel
from saescope.activations import ModelBatches
from saescope.models import load_model
from saescope.runs import DataSpec, train_hooks, train_run
from saescope.saes import make_sae
from saescope.training import TrainConfig

CASES = {
    "four": ["layers.0", "layers.1", "layers.2", "layers.3"],
    "one": ["layers.1"],  # more ranks than SAEs: rank 1 owns none, harvests and sends
}
CONTEXT, BATCH, STEPS, D_SAE = 9, 96, 5, 32


def streams(hooks: list[str]) -> list[ModelBatches]:
    """glassllm on the fly at each hook point, on contexts of random tokens (no text)."""
    model = load_model("glassllm")[0]
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(model.embed.num_embeddings, (48, CONTEXT), generator=g)
    return [ModelBatches(model, ids, h, batch_size=BATCH, seed=1) for h in hooks]


def config() -> TrainConfig:
    return TrainConfig(
        steps=STEPS,
        lr=3e-3,
        init_samples=150,
        log_every=2,
        checkpoint_every=0,
        checkpoint_minutes=0,
        progress=False,
    )


def sae(d_in: int):
    torch.manual_seed(0)
    return make_sae({"architecture": "topk", "d_in": d_in, "d_sae": D_SAE, "k": 4})


def spec(hook: str) -> DataSpec:
    return DataSpec("model", model="glassllm", hook=hook, context=CONTEXT)  # recorded only


def alone(case: str) -> dict[str, dict[str, torch.Tensor]]:
    """Each hook point's SAE trained by itself (one process, whole batches)."""
    out = {}
    for s in streams(CASES[case]):
        result = train_run(sae(s.d_in), spec(s.hooks.x), s, config(), None)
        out[s.hooks.x] = result.saes[0].state_dict()
    return out


def together(case: str, out: Path, group: parallel.DDPGroup | None) -> None:
    hooks = CASES[case]
    got = streams(hooks)
    saes = [sae(s.d_in) for s in got]
    train_hooks(saes, [spec(h) for h in hooks], got, config(), out / case, group=group)


if __name__ == "__main__":
    torch.set_num_threads(1)
    with parallel.launched("layers", timeout=30) as grp:
        for c in CASES:
            together(c, Path(sys.argv[1]), grp)

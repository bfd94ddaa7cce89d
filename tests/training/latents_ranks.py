"""The latent-sharding tests' runs (tests/training/test_latents_loop.py), one rank per process.

`python tests/training/latents_ranks.py DATA OUT` with torchrun's variables trains every case
of CASES with its latents sharded over the ranks (`--parallel latents`), rank 0 saving each
SAE into OUT/<case>; `train_case(case, data, None, None)` trains the same case unsharded in
one process. The `-resume` case stops part-way (its stream ends) and is resumed."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from saescope import parallel
from saescope.data.files import ActivationFile
from saescope.errors import InputError
from saescope.runs import DataSpec, train_run
from saescope.saes import make_sae
from saescope.training import TrainConfig

D_SAE, BATCH, STEPS, STOP = 64, 128, 50, 30
ARCHS = {
    "topk": {"k": 4, "k_aux": 16},
    "batchtopk": {"k": 4, "k_aux": 16, "d_sae": 63},  # an uneven split: 31 and 32 latents
    "relu": {"l1_coef": 1.0},  # resampling its dead latents
    "jumprelu": {},
}
CASES = [*ARCHS, "topk-resume"]


class Ending(ActivationFile):
    """The file's batches, ending after `stop` of them (a run stopped part-way)."""

    def __init__(self, path: Path, batch_size: int, seed: int, stop: int) -> None:
        super().__init__(path, batch_size, seed)
        self.stop = stop

    def iter_from(self, start: int):
        for i in range(start, self.stop):
            yield self.batch(i)


def config() -> TrainConfig:
    return TrainConfig(
        steps=STEPS,
        lr=3e-3,
        init_samples=600,
        log_every=10,
        checkpoint_every=25,
        checkpoint_minutes=0,
        dead_tokens=4 * BATCH,  # latents die within the run: AuxK and resampling work
        resample_every=10,
        grad_clip=1.0,
        progress=False,
    )


def train_case(case: str, data: Path, out: Path | None, group):
    arch = case.split("-")[0]
    fields = {"d_sae": D_SAE, **ARCHS[arch]}
    spec = DataSpec.at(data / "acts.npy")  # recorded only

    def run(batches: ActivationFile, resume: bool = False):
        torch.manual_seed(0)
        sae = make_sae({"architecture": arch, "d_in": batches.d_in, **fields})
        return train_run(sae, spec, batches, config(), out, resume, group=group)

    if case.endswith("-resume") and group is not None:
        try:
            run(Ending(data / "acts.npy", BATCH, 1, STOP))
        except InputError:  # the stream ended at step 30: the checkpoint of step 25 is kept
            pass
        return run(ActivationFile(data / "acts.npy", BATCH, 1), resume=True)
    return run(ActivationFile(data / "acts.npy", BATCH, 1))


if __name__ == "__main__":
    torch.set_num_threads(1)
    data_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    with parallel.launched("latents", timeout=30) as grp:
        for c in CASES:
            train_case(c, data_dir, out_dir / c, grp)

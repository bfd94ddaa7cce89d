"""Data-parallel training with real processes (gloo, 2 ranks, one thread each): the same SAE
as one process on the same global batches, only rank 0 writing; a killed rank stops the other
with one line naming it, a resume on another world size is refused in one line, and a resume
on the same one completes to the uninterrupted run's weights."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saescope import SAE
from saescope.cli import main
from saescope.parallel import plan
from saescope.training.checkpoint import read_meta
from tests.parallel import ranks

SRC = Path(__file__).resolve().parents[2] / "src"
RANKS = Path(__file__).with_name("ranks.py")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(argv: Callable[[int], list[str]], logs: Path, size: int = 2) -> list[subprocess.Popen]:
    """`size` processes, rank r running argv(r), with torchrun's variables, one thread each
    (stderr to logs/rank{r}.err)."""
    port, procs = _port(), []
    logs.mkdir(parents=True, exist_ok=True)
    for r in range(size):
        env = {
            **os.environ,
            "PYTHONPATH": str(SRC),
            "OMP_NUM_THREADS": "1",
            "RANK": str(r),
            "LOCAL_RANK": str(r),
            "WORLD_SIZE": str(size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        with open(logs / f"rank{r}.err", "wb") as err:
            procs.append(subprocess.Popen(argv(r), env=env, stdout=subprocess.DEVNULL, stderr=err))
    return procs


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    """Every tensor within 1e-5 of the other, relative to its largest entry."""
    assert a.keys() == b.keys(), what
    for k in a:
        scale = b[k].abs().max().clamp_min(1e-12)
        rel = float((a[k] - b[k]).abs().max() / scale)
        assert rel <= 1e-5, f"{what} {k}: {rel:.2e}"


@pytest.mark.slow
def test_two_ranks_train_the_sae_one_process_trains(tmp_path):
    data = tmp_path / "data"
    ranks.write_data(data)
    outs = [tmp_path / "rank0", tmp_path / "rank1"]  # each rank its own out_dir: who writes?
    procs = _ranks(lambda r: [sys.executable, str(RANKS), str(data), str(outs[r])], tmp_path)
    one = ranks.train_all(data, None)  # meanwhile, the same cases in this process
    for r, p in enumerate(procs):
        assert p.wait(timeout=300) == 0, (tmp_path / f"rank{r}.err").read_text()
    for case, (weights, final) in one.items():
        _close(SAE.load(outs[0] / case).state_dict(), weights, case)
        logged = json.loads((outs[0] / case / "cfg.json").read_text())["metadata"]["final_metrics"]
        assert logged["outliers"] == final["outliers"], case  # the same tokens set aside
        assert final["outliers"] > 0 or case.endswith("-model"), case  # (the data has some)
        for key in ("loss", "l0", "mse", "explained_variance", "dead_fraction"):
            assert logged[key] == pytest.approx(final[key], rel=1e-5, abs=1e-7), (case, key)
        assert (outs[0] / case / "metrics.jsonl").is_file()
        if case.endswith("-target"):  # the controller moved the same on both ranks
            assert logged["sparsity_coef"] == pytest.approx(final["sparsity_coef"], rel=1e-6)
    assert not outs[1].exists()  # rank 1 wrote nothing


SLOW_CLI = r"""
import sys, time
from saescope.data.files import ActivationFile
part = ActivationFile.part
def slow(self, i, lo, hi):  # the same rows, slowed so that the test can stop the run part-way
    time.sleep(0.05)
    return part(self, i, lo, hi)
ActivationFile.part = slow
from saescope.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _train_argv(data: Path, out: Path) -> list[str]:
    argv = ["train", "--data", str(data / "acts.npy"), "--arch", "topk", "--k", "4"]
    argv += ["--d-sae", "64", "--steps", "60", "--batch-size", "256", "--init-samples", "512"]
    argv += ["--log-every", "5", "--checkpoint-every", "10", "--checkpoint-minutes", "0"]
    return [*argv, "--progress", "false", "--dist-timeout", "20", "--out", str(out)]


def _errors(folder: Path, r: int) -> list[str]:
    return (folder / f"rank{r}.err").read_text().strip().splitlines()


@pytest.mark.slow
def test_a_killed_rank_stops_the_other_and_the_run_resumes(tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    ranks.write_data(data)
    argv = _train_argv(data, run)
    procs = _ranks(lambda r: [sys.executable, "-c", SLOW_CLI, *argv], tmp_path / "killed")
    deadline = time.time() + 300
    while (read_meta(run) or {}).get("step", 0) < 20:
        assert all(p.poll() is None for p in procs), _errors(tmp_path / "killed", 0)
        assert time.time() < deadline
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    assert procs[0].wait(timeout=90) == 2
    assert time.monotonic() - killed < 60
    procs[1].wait()
    err = _errors(tmp_path / "killed", 0)
    assert len(err) == 1, err
    assert err[0].startswith("saescope: error: rank 0: rank 1 of 2 stopped answering"), err
    assert 20 <= read_meta(run)["step"] < 60  # stopped part-way, its last checkpoint kept

    # on one process: refused, in one line
    assert main(["train", "--out", str(run), "--resume"]) == 2
    refused = capsys.readouterr().err.strip().splitlines()
    assert len(refused) == 1 and "trained on 2 process(es)" in refused[0], refused
    assert "torchrun --nproc-per-node 2" in refused[0]

    # on two again: it completes, to the weights of the run uninterrupted (on one process)
    resume = [sys.executable, "-m", "saescope", "train", "--out", str(run), "--resume"]
    procs = _ranks(lambda r: [*resume, "--progress", "false"], tmp_path / "resumed")
    assert main(_train_argv(data, tmp_path / "one")) == 0
    for r, p in enumerate(procs):
        assert p.wait(timeout=300) == 0, _errors(tmp_path / "resumed", r)
    assert read_meta(run)["step"] == 60
    got = load_file(run / "sae_weights.safetensors")
    _close(got, load_file(tmp_path / "one" / "sae_weights.safetensors"), "resumed")


METER = r"""
import json, sys, torch
from saescope import parallel
from saescope.data.stream import RowBatches
from saescope.saes import make_sae
from saescope.training import TrainConfig, train
torch.set_num_threads(1)
with parallel.launched("ddp", timeout=30) as group:
    rows = torch.randn(1024, 16, generator=torch.Generator().manual_seed(0))
    batches = parallel.Shard(RowBatches(rows, batch_size=256, seed=1), group.rank, group.size)
    torch.manual_seed(0)
    sae = make_sae({"architecture": "topk", "d_in": 16, "d_sae": 64, "k": 4})
    snaps, read = [], batches.batch
    batches.batch = lambda i: (snaps.append(group.meter.snapshot()), read(i))[1]
    cfg = TrainConfig(steps=5, log_every=5, checkpoint_every=0, progress=False, init_samples=256)
    train(sae, batches, cfg, None, group=group)
    step = {k: {f: v - (snaps[2].get(k) or {}).get(f, 0) for f, v in c.items() if v is not None}
            for k, c in snaps[3].items()}
    open(sys.argv[1] + str(group.rank), "w").write(json.dumps(step))
"""


@pytest.mark.slow  # two processes importing torch: ~8 s of CPU, ~4 s on 2 idle cores
def test_the_meter_counts_the_bytes_of_a_step_as_the_model_says(tmp_path):
    """One ddp step's collectives, counted on each of 2 ranks: the gradient all-reduce is the
    size docs/SCALING.md's formula gives, and the bytes written to the sockets during the
    collectives are that model's plus gloo's headers."""
    procs = _ranks(lambda r: [sys.executable, "-c", METER, str(tmp_path / "step")], tmp_path)
    for r, p in enumerate(procs):
        assert p.wait(timeout=120) == 0, _errors(tmp_path, r)
    model = plan.ddp_collectives(plan.SAESize(16, 64, 4), 2)
    step = json.loads((tmp_path / "step1").read_text())  # rank 1's step 2
    assert step["sum"]["calls"] == len(model) == 2
    assert step["sum"]["tensor"] == sum(c.nbytes for c in model)
    assert step["sum"]["wire"] == sum(c.wire() for c in model)
    assert step["gather"]["tensor"] == 8 + 4 * 128 * 16  # the tail (each rank's row count, rows)
    total = step["total"]
    assert total["wire"] <= total["os"] <= total["wire"] + 1024 * total["calls"]

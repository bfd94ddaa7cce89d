"""A killed run resumes to bitwise the same weights; a kill during a checkpoint write leaves
the previous checkpoint loadable."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from saescope.data import ArticleTask, ArticleTaskConfig
from saescope.saes import make_sae
from saescope.training import CHECKPOINT_FILE, TrainConfig, train

STEPS = 120
CHILD = r"""
import os, signal, sys, time, torch
from saescope.data import ArticleTask, ArticleTaskConfig
from saescope.saes import make_sae
from saescope.training import TrainConfig, train
import saescope.atomic as io

out, mode = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
saes = [make_sae(c) for c in [
    {"architecture": "relu", "d_in": 6, "d_sae": 24},
    {"architecture": "topk", "d_in": 6, "d_sae": 24, "k": 3},
    {"architecture": "batchtopk", "d_in": 6, "d_sae": 24, "k": 3},
    {"architecture": "gated", "d_in": 6, "d_sae": 24},
    {"architecture": "jumprelu", "d_in": 6, "d_sae": 24},
]]
task = ArticleTask(ArticleTaskConfig(d_in=6, n_features=16), batch_size=256)

class Slow:
    # The same stream, slowed so that the parent can kill the run part-way.
    def iter_from(self, start):
        for b in task.iter_from(start):
            time.sleep(0.01 if mode == "slow" else 0)
            yield b

if mode == "torn":
    real = io.save_file
    calls = []
    def torn(tensors, path, metadata=None):
        calls.append(path)
        real(tensors, path, metadata=metadata)
        if len(calls) == 2:  # the second checkpoint: half-written, then the machine dies
            size = os.path.getsize(path)
            with open(path, "r+b") as fh:
                fh.truncate(size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    io.save_file = torn

cfg = TrainConfig(steps=int(sys.argv[3]), checkpoint_every=20, dead_tokens=2000, resample_every=25,
                  progress=False)
train(saes, Slow(), cfg, out, resume=(mode == "resume"))
"""


def _run(out: Path, mode: str) -> subprocess.Popen:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}-{mode}.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", CHILD, str(out), mode, str(STEPS)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def _log(out: Path, mode: str) -> str:
    return (out.parent / f"{out.name}-{mode}.log").read_text()


def _step(ckpt: Path) -> int:
    with safe_open(str(ckpt), "pt") as fh:
        return json.loads(fh.metadata()["saescope_checkpoint"])["step"]


def _weights(run: Path) -> list[dict[str, torch.Tensor]]:
    return [load_file(run / f"sae_{i}" / "sae_weights.safetensors") for i in range(5)]


def _assert_bitwise(a, b):
    for wa, wb in zip(a, b, strict=True):
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict[str, torch.Tensor]]:
    """Final weights of the uninterrupted run: the child's code, run in this process (the
    same thread count as the children), so the killed children must match a run made
    elsewhere, and the suite starts one interpreter fewer."""
    ref = tmp_path_factory.mktemp("ref") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["-c", str(ref), "fast", str(STEPS)])
        exec(CHILD, {"__name__": "__main__"})
    return _weights(ref)


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, reference):
    run = tmp_path / "run"
    proc = _run(run, "slow")
    ckpt = run / CHECKPOINT_FILE
    deadline = time.time() + 300
    while time.time() < deadline:
        if ckpt.is_file() and _step(ckpt) >= 40:
            break
        assert proc.poll() is None, _log(run, "slow")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    killed_at = _step(ckpt)
    assert 40 <= killed_at < STEPS
    assert not (run / "sae_0" / "sae_weights.safetensors").exists()

    resumed = _run(run, "resume")
    assert resumed.wait(timeout=300) == 0, _log(run, "resume")
    _assert_bitwise(reference, _weights(run))
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["sae"] == 0]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # no duplicated rows


@pytest.mark.slow
def test_kill_during_checkpoint_write_keeps_previous(tmp_path, reference):
    run = tmp_path / "run"
    proc = _run(run, "torn")
    assert proc.wait(timeout=300) == -signal.SIGKILL
    ckpt = run / CHECKPOINT_FILE
    assert _step(ckpt) == 20  # the first checkpoint, intact; the torn one never replaced it
    load_file(ckpt)
    resumed = _run(run, "resume")
    assert resumed.wait(timeout=300) == 0, _log(run, "resume")
    _assert_bitwise(reference, _weights(run))


def test_resuming_a_finished_run_keeps_its_final_metrics(tmp_path):
    task = ArticleTask(ArticleTaskConfig(), batch_size=64)
    cfg = TrainConfig(steps=4, log_every=2, progress=False)
    first = train(
        make_sae({"architecture": "topk", "d_in": 4, "d_sae": 8, "k": 2}), task, cfg, tmp_path
    )
    again = train(
        make_sae({"architecture": "topk", "d_in": 4, "d_sae": 8, "k": 2}),
        task,
        cfg,
        tmp_path,
        resume=True,
    )
    assert again.final_metrics == first.final_metrics and first.final_metrics[0]["step"] == 4
    saved = json.loads((tmp_path / "cfg.json").read_text())["metadata"]["final_metrics"]
    assert saved == first.final_metrics[0]

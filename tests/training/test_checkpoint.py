"""A killed run resumes to bitwise the same weights, from a checkpoint at any step (by step
count or by wall time); a kill during a checkpoint write leaves the previous checkpoint
loadable."""

import dataclasses
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
from safetensors.torch import load_file, save_file

import saescope.saes.base as saes_base
from saescope.data import ArticleTask, ArticleTaskConfig
from saescope.data.stream import RowBatches
from saescope.errors import ConfigError, InputError
from saescope.saes import make_sae
from saescope.training import CHECKPOINT_FILE, TrainConfig, train
from saescope.training.checkpoint import check_world_size, read_meta
from saescope.training.config import default_lr

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


def _stopped_then_resumed(configs, stream, cfg, stop_at, out) -> list:
    """Train until the stream runs out after `stop_at` batches (a crash), then resume."""
    torch.manual_seed(0)
    with pytest.raises(InputError, match=f"ended after {stop_at} batches"):
        train([make_sae(c) for c in configs], [stream.batch(i) for i in range(stop_at)], cfg, out)
    assert read_meta(out)["step"] == stop_at
    torch.manual_seed(1)  # the resumed run's weights come from the checkpoint, not the init
    return train([make_sae(c) for c in configs], stream, cfg, out, resume=True).saes


def _uninterrupted(configs, stream, cfg) -> list:
    torch.manual_seed(0)
    return train([make_sae(c) for c in configs], stream, cfg).saes


def _assert_same_saes(a, b) -> None:
    for sa, sb in zip(a, b, strict=True):
        for (name, ta), tb in zip(sa.state_dict().items(), sb.state_dict().values(), strict=True):
            assert torch.equal(ta, tb), name


def test_a_checkpoint_by_wall_time_resumes_bitwise_from_any_step(tmp_path):
    """checkpoint_minutes writes checkpoints between the step-count ones (here after every
    step: a nanosecond has always passed); one at step 13, no multiple of anything, resumes
    to the uninterrupted weights."""
    configs = [
        {"architecture": "relu", "d_in": 6, "d_sae": 24},
        {"architecture": "topk", "d_in": 6, "d_sae": 24, "k": 3},
        {"architecture": "jumprelu", "d_in": 6, "d_sae": 24},
    ]
    task = ArticleTask(ArticleTaskConfig(d_in=6, n_features=16), batch_size=64)
    cfg = TrainConfig(steps=20, checkpoint_every=0, checkpoint_minutes=1e-9, resample_every=7)
    cfg = dataclasses.replace(cfg, dead_tokens=300, init_samples=128, progress=False)
    resumed = _stopped_then_resumed(configs, task, cfg, 13, tmp_path / "run")
    _assert_same_saes(_uninterrupted(configs, task, cfg), resumed)


def test_resume_keeps_the_sparse_paths_choice(tmp_path, monkeypatch):
    """ReLU and JumpReLU choose the sparse or the dense path from the last batch's live
    density; the checkpoint keeps it, so the first step after resume takes the same path as
    the uninterrupted run (the two paths agree only to rounding). The density threshold is
    raised so that this small SAE takes the sparse path after its first step."""
    monkeypatch.setattr(saes_base, "SPARSE_MAX_DENSITY", 0.99)
    configs = [{"architecture": "relu", "d_in": 32, "d_sae": 512, "l1_coef": 5.0}]
    rows = torch.randn(2048, 32, generator=torch.Generator().manual_seed(0))
    stream = RowBatches(rows, batch_size=128)
    cfg = TrainConfig(steps=12, checkpoint_every=5, init_samples=128, progress=False)
    resumed = _stopped_then_resumed(configs, stream, cfg, 5, tmp_path / "run")
    _assert_same_saes(_uninterrupted(configs, stream, cfg), resumed)


def test_a_run_resumes_only_on_its_own_world_size(tmp_path):
    check_world_size(2, 2, tmp_path)
    with pytest.raises(ConfigError, match="trained on 2 process") as e:
        check_world_size(2, 1, tmp_path)
    assert "torchrun --nproc-per-node 2" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="Resume it with plain saescope"):
        check_world_size(1, 4, tmp_path)


def test_a_checkpoint_without_resamplings_window_resumes_with_the_old_defaults(
    tmp_path, monkeypatch
):
    """Checkpoints from before issue 18's fix record no resampling window or period: they
    resume as they began (the dead window, steps/6), not with today's defaults."""
    configs = [{"architecture": "relu", "d_in": 6, "d_sae": 24, "l1_coef": 10.0}]  # latents die
    task = ArticleTask(ArticleTaskConfig(d_in=6, n_features=16), batch_size=64)
    cfg = TrainConfig(steps=48, checkpoint_every=0, checkpoint_minutes=1e-9, progress=False)
    cfg = dataclasses.replace(cfg, lr=0.05, init_samples=128)  # L0 below 1 within 12 steps
    today = _uninterrupted(configs, task, cfg)
    with monkeypatch.context() as m:  # the rule before the fix
        m.setattr(TrainConfig, "resample_period", lambda self: max(1, self.steps // 6))
        m.setattr(TrainConfig, "resample_window", TrainConfig.dead_window)
        before = _uninterrupted(configs, task, cfg)
        torch.manual_seed(0)
        with pytest.raises(InputError, match="ended after 3 batches"):
            train([make_sae(c) for c in configs], [task.batch(i) for i in range(3)], cfg, tmp_path)
    pairs = zip(today[0].parameters(), before[0].parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)  # the two rules differ here
    path = tmp_path / CHECKPOINT_FILE
    with safe_open(str(path), "pt") as fh:
        meta = json.loads(fh.metadata()["saescope_checkpoint"])
    assert (meta.pop("resample_tokens"), meta.pop("resample_every")) == (meta["dead_tokens"], 8)
    save_file(load_file(path), path, {"saescope_checkpoint": json.dumps(meta)})
    resumed = train([make_sae(c) for c in configs], task, cfg, tmp_path, resume=True).saes
    _assert_same_saes(before, resumed)


def _rewrite_meta(ckpt: Path, change) -> None:
    """Rewrite a checkpoint's JSON (as an older saescope wrote it)."""
    with safe_open(str(ckpt), "pt") as fh:
        meta = json.loads(fh.metadata()["saescope_checkpoint"])
    change(meta)
    save_file(load_file(ckpt), ckpt, {"saescope_checkpoint": json.dumps(meta)})


def test_the_rate_used_is_recorded_and_an_older_run_resumes_at_its_own(tmp_path):
    """A run given no lr records the rate it used, and resumes at it whatever the default
    is then; a checkpoint from before rates were recorded (lr null, version 1) resumes at
    the default of then, 2e-4 / sqrt(d_sae / 2^14), not today's."""
    task = ArticleTask(ArticleTaskConfig(), batch_size=64)
    cfg = TrainConfig(steps=3, log_every=3, progress=False)

    def sae():
        return make_sae({"architecture": "topk", "d_in": 4, "d_sae": 8, "k": 2})

    train(sae(), task, cfg, tmp_path)
    assert read_meta(tmp_path)["train"]["lr"] == default_lr(8)
    train(sae(), task, cfg, tmp_path, resume=True)  # the recorded rate: same settings

    def older(meta):
        meta["version"], meta["train"]["lr"] = 1, None

    _rewrite_meta(tmp_path / CHECKPOINT_FILE, older)
    train(sae(), task, cfg, tmp_path, resume=True)
    used = json.loads((tmp_path / "cfg.json").read_text())["metadata"]["training"]["lr"]
    assert used == pytest.approx(2e-4 / (8 / 2**14) ** 0.5) and used != default_lr(8)
    with pytest.raises(ConfigError, match="lr is"):  # another rate is another run
        train(sae(), task, dataclasses.replace(cfg, lr=default_lr(8)), tmp_path, resume=True)

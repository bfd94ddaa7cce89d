"""`saescope train` (and eval of what it trained): synthetic data, activation files,
transcoders, help text from the config docstrings, defaults that work, and `--resume` with
the run's own settings after SIGKILL or SIGTERM."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import saescope
from saescope.cli import main
from saescope.cli.options import field_docs
from saescope.saes import BatchTopKConfig, TopKConfig
from saescope.training import TrainConfig
from saescope.training.checkpoint import read_meta


def test_train_then_eval_synthetic(tmp_path, capsys):
    run = tmp_path / "x"
    argv = [
        "train",
        "--arch",
        "topk",
        "--k",
        "4",
        "--d-sae",
        "64",
        "--data",
        "synthetic",
        "--out",
        str(run),
        "--steps",
        "150",
        "--batch-size",
        "256",
        "--lr",
        "0.003",
        "--seed",
        "3",
    ]
    assert main(argv) == 0
    assert "saved to" in capsys.readouterr().out
    sae = saescope.load(run)
    assert sae.cfg.k == 4 and sae.cfg.d_sae == 64 and sae.cfg.d_in == 4
    cfg = json.loads((run / "cfg.json").read_text())
    train_cfg = cfg["metadata"]["training"]
    assert (train_cfg["steps"], train_cfg["lr"], train_cfg["seed"]) == (150, 0.003, 3)
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["step"] == 150

    assert main(["eval", str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("l0", "mse", "explained_variance", "dead_fraction", "mmcs"):
        assert key in out
    assert out["l0"] <= 4
    assert out["explained_variance"] > 0.8

    assert main(["eval", str(run)]) == 0
    table = capsys.readouterr().out
    assert "explained_variance" in table and "topk" in table


def test_same_seed_same_result_and_batch_size_is_used(tmp_path):
    common = ["train", "--arch", "relu", "--steps", "20", "--progress", "false"]
    for name in ("a", "b"):
        assert (
            main([*common, "--seed", "1", "--batch-size", "64", "--out", str(tmp_path / name)]) == 0
        )
    a, b = saescope.load(tmp_path / "a"), saescope.load(tmp_path / "b")
    assert torch.equal(a.W_enc, b.W_enc)
    rows = [json.loads(r) for r in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["tokens"] == 20 * 64


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_train_on_activation_file(tmp_path, capsys, suffix):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(2048, 12)) * rng.uniform(0.5, 2, size=12)).astype(np.float32)
    path = tmp_path / f"acts{suffix}"
    if suffix == ".npy":
        np.save(path, x)
    else:
        save_file({"activations": torch.from_numpy(x)}, path)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--arch",
                "batchtopk",
                "--k",
                "4",
                "--data",
                str(path),
                "--out",
                str(run),
                "--steps",
                "60",
                "--batch-size",
                "256",
                "--progress",
                "false",
            ]
        )
        == 0
    )
    assert saescope.load(run).cfg.d_in == 12
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_tokens"] == 2048 and 0 < out["l0"] <= 12


def test_transcoder_from_xy_file(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1024, 8)).astype(np.float32)
    y = np.maximum(x @ rng.normal(size=(8, 5)), 0).astype(np.float32)
    save_file({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, tmp_path / "xy.safetensors")
    assert (
        main(
            [
                "train",
                "--arch",
                "relu",
                "--data",
                str(tmp_path / "xy.safetensors"),
                "--out",
                str(tmp_path / "tc"),
                "--steps",
                "30",
                "--progress",
                "false",
            ]
        )
        == 0
    )
    tc = saescope.load(tmp_path / "tc")
    assert (tc.cfg.d_in, tc.cfg.d_out, tc.cfg.apply_b_dec_to_input) == (8, 5, False)
    assert tc(torch.from_numpy(x)).shape == (1024, 5)


def test_help_comes_from_field_docs(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    # k means something else for topk and batchtopk: each says its own, in ARCHITECTURES order
    topk, batch = (field_docs(c)["k"].rstrip(".") for c in (TopKConfig, BatchTopKConfig))
    ks = f"topk: {topk}; batchtopk: {batch}; matryoshka: {batch}."
    assert f"--k K {ks} [topk, batchtopk, matryoshka]" in text
    assert field_docs(TrainConfig)["steps"] in text
    # defaults the data sets are said as the code computes them (build_sae), not the config's
    assert "[topk, batchtopk, matryoshka] (default: min(32, d_in // 2))" in text
    assert "--keep-outliers" in text and "(default: 10.0)" in text


@pytest.mark.slow
def test_defaults_work_on_the_seed_task(tmp_path, capsys):
    """Default steps, LR and sparsity settings reach the seed task's true L0 (2.0) with a
    dictionary as large as the true one; only --d-sae is given. Through the CLI for one
    architecture (BatchTopK: a float k, and eval through its learned threshold); the claim
    that every architecture's defaults do is tests/experiments/test_recovery.py's
    test_seed_task_reaches_the_true_l0, which trains exactly these SAEs."""
    arch = "batchtopk"
    run = tmp_path / arch
    assert (
        main(["train", "--arch", arch, "--d-sae", "8", "--out", str(run), "--progress", "0"]) == 0
    )
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert abs(out["l0"] - 2.0) <= 0.5, out
    assert out["explained_variance"] >= 0.8, out


def test_target_l0_through_the_cli_and_resume(tmp_path, capsys):
    """--target-l0 sets topk's k; for relu it is recorded with the coefficient reached, which
    the controller moved from the default; a resumed run takes the same target."""
    common = ["--target-l0", "3", "--d-sae", "32", "--steps", "60", "--batch-size", "128"]
    common += ["--init-samples", "128", "--progress", "0", "--data", "synthetic"]
    common += ["--d-in", "8", "--n-features", "12"]
    assert main(["train", "--arch", "topk", *common, "--out", str(tmp_path / "k")]) == 0
    assert saescope.load(tmp_path / "k").cfg.k == 3
    run = tmp_path / "relu"
    assert main(["train", "--arch", "relu", *common, "--out", str(run)]) == 0
    cfg = json.loads((run / "cfg.json").read_text())
    assert cfg["target_l0"] == 3.0 and cfg["l1_coef"] != 1.0
    assert cfg["l1_coef"] == cfg["metadata"]["target_l0"]["reached"]
    assert cfg["metadata"]["final_metrics"]["sparsity_coef"] == cfg["l1_coef"]
    assert main(["train", "--out", str(run), "--resume", "--target-l0", "3"]) == 0
    assert json.loads((run / "cfg.json").read_text())["l1_coef"] == cfg["l1_coef"]
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--target-l0", "4"]) == 2
    assert "target_l0 is 3.0 in the run, 4 here" in capsys.readouterr().err


def test_log_tensorboard_writes_the_metrics_beside_the_jsonl(tmp_path, capsys, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    argv = ["train", "--arch", "topk", "--out", str(run), "--steps", "4", "--progress", "0"]
    assert main([*argv, "--log-every", "2", "--log", "tensorboard"]) == 0
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scalars = acc.Scalars("explained_variance")
    assert [e.step for e in scalars] == [r["step"] for r in rows] == [2, 4]
    assert [e.value for e in scalars] == pytest.approx([r["explained_variance"] for r in rows])
    # Without the package: one line naming the fix, before anything is trained or written.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    capsys.readouterr()
    assert main([*argv[:4], str(tmp_path / "none"), *argv[5:], "--log", "tensorboard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "saescope: error: --log tensorboard needs the tensorboard package: "
        "pip install saescope[tensorboard]"
    ]
    assert not (tmp_path / "none").exists()


# ----- resume with the run's own settings; SIGKILL and SIGTERM ---------------------------------

SLOW_CLI = r"""
import sys, time
from saescope.data import ArticleTask
batch = ArticleTask.batch
def slow(self, i):  # the same batches, slowed so that the test can stop the run part-way
    time.sleep(0.1)
    return batch(self, i)
ArticleTask.batch = slow
from saescope.cli import main
sys.exit(main(sys.argv[1:]))
"""
RUN = ["train", "--arch", "topk", "--k", "3", "--d-sae", "32", "--steps", "100"]
RUN += ["--batch-size", "64", "--init-samples", "256", "--seed", "2", "--log-every", "5"]
RUN += ["--progress", "false"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The final weights of the run uninterrupted (in this process, the children's threads)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main([*RUN, "--out", str(out)]) == 0
    return load_file(out / "sae_weights.safetensors")


def _start(run, *extra) -> subprocess.Popen:
    with open(run.parent / "err.log", "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-c", SLOW_CLI, *RUN, "--out", str(run), *extra],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _wait_until(proc, run, done) -> None:
    """Poll until done() (the child running), within a generous deadline."""
    deadline = time.time() + 300
    while not done():
        assert proc.poll() is None, (run.parent / "err.log").read_text()
        assert time.time() < deadline
        time.sleep(0.05)


def _logged_steps(run) -> int:
    log = run / "metrics.jsonl"
    return log.read_text().count("\n") * 5 if log.is_file() else 0


def _resume_with_no_option(run) -> subprocess.CompletedProcess:
    """`saescope train --out RUN --resume`, nothing else, as a user types it."""
    argv = [sys.executable, "-m", "saescope", "train", "--out", str(run), "--resume"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def _assert_bitwise(expected, run) -> None:
    got = load_file(run / "sae_weights.safetensors")
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


@pytest.mark.slow
def test_sigkill_then_resume_with_no_option_is_bitwise(tmp_path, uninterrupted):
    run = tmp_path / "run"
    proc = _start(run, "--checkpoint-every", "10")
    _wait_until(proc, run, lambda: (read_meta(run) or {}).get("step", 0) >= 20)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert 20 <= read_meta(run)["step"] < 100
    _resume_with_no_option(run)
    _assert_bitwise(uninterrupted, run)
    steps = [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(5, 101, 5))  # the rows after the checkpoint written once


@pytest.mark.slow
def test_sigterm_checkpoints_says_how_to_resume_and_resumes_bitwise(tmp_path, uninterrupted):
    run = tmp_path / "run"
    proc = _start(run, "--checkpoint-every", "0")  # no checkpoint but SIGTERM's before the end
    _wait_until(proc, run, lambda: _logged_steps(run) >= 20)
    proc.terminate()
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    err = (tmp_path / "err.log").read_text()
    step = read_meta(run)["step"]
    assert 20 <= step < 100
    assert f"after step {step}" in err
    assert f"resume with: saescope train --out {run} --resume" in err.splitlines()[-1]
    assert not (run / "sae_weights.safetensors").exists()
    _resume_with_no_option(run)
    _assert_bitwise(uninterrupted, run)


def test_resume_refuses_another_k_and_takes_what_does_not_change_the_result(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--arch", "topk", "--k", "3", "--d-sae", "16", "--out", str(run)]
    assert main([*args, "--steps", "6", "--batch-size", "32", "--progress", "false"]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--k", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "saescope: error: cannot resume: k is 3 in the run, 4 here; resume with the run's value "
        "or start a new run"
    )
    ok = ["--resume", "--log-every", "2", "--checkpoint-every", "3", "--checkpoint-minutes", "1"]
    assert main([*args, "--batch-size", "32", "--steps", "6", *ok, "--progress", "true"]) == 0
    assert main(["train", "--out", str(run), "--resume", "--batch-size", "64"]) == 2
    assert "batch_size is 32 in the run, 64 here" in capsys.readouterr().err

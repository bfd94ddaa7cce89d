"""`saescope index RUN`: the CLI end to end on a glassllm run, a build killed part-way (a real
subprocess, SIGKILL) and run again ends with the same index as an uninterrupted one,
`saescope train --index`, and bad input as one line."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from saescope.analysis import FeatureIndex
from saescope.analysis.run import CHECKPOINT
from saescope.cli import main
from tests.analysis.test_run import copy_run, pages
from tests.cli.common import one_line_error

SRC = Path(__file__).resolve().parents[2] / "src"
ARGS = ["--tokens", "12000", "--batch-size", "2"]


def _saescope(*argv, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, "-m", "saescope", *map(str, argv)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _info(path) -> dict:
    with FeatureIndex.open(path) as idx:
        return {k: v for k, v in idx.info.items() if k != "path"}


@pytest.mark.slow
def test_killed_build_resumes_to_the_uninterrupted_index(glass_sae, tmp_path, capsys):
    (tmp_path / "whole").mkdir()
    (tmp_path / "cut").mkdir()
    whole = copy_run(glass_sae, tmp_path / "whole" / "run")
    cut = copy_run(glass_sae, tmp_path / "cut" / "run")
    ckpt = cut / CHECKPOINT
    proc = _saescope("index", cut, *ARGS, "--checkpoint-every", "3", "--no-progress")
    deadline = time.monotonic() + 120
    while not ckpt.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the build ended before it could be killed"
    assert ckpt.is_file() and not (cut / "index.sqlite").exists()
    assert main(["index", str(whole), *ARGS, "--no-progress"]) == 0
    assert "indexed 2,048 features of run over" in capsys.readouterr().out
    again = _saescope("index", cut, *ARGS)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err.decode()
    assert "resumed at batch" in err.decode() and "indexed 2,048 features" in out.decode()
    assert not ckpt.exists()
    assert _info(cut) == _info(whole)
    assert pages(cut / "index.sqlite") == pages(whole / "index.sqlite")


@pytest.mark.slow
def test_train_with_index(tmp_path, capsys):
    text = tmp_path / "alice.txt"
    text.write_text("The Queen said to the King: off with his head! Alice looked on. " * 60)
    argv = ["train", "--arch", "topk", "--model", "glassllm", "--hook", "layers.1", "--text"]
    argv += [str(text), "--context", "32", "--tokens", "2048", "--d-sae", "64", "--k", "4"]
    argv += ["--batch-size", "256", "--progress", "false", "--index", "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "indexed 64 features of r over" in out
    with FeatureIndex.open(tmp_path / "r") as idx:
        assert idx.info["hook"] == "layers.1" and idx.info["tokens"] > 0
        assert any(idx.search_token(t) for t in (" Queen", " King", " Alice"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tokens", "-5"], "--tokens must be at least 1 (or 0 for all the text), got -5"),
        (["--batch-size", "0"], "batch_size must be at least 1"),
        (["--sae", "sae_7"], "has no SAE 'sae_7'"),
    ],
)
def test_bad_input_is_one_line(glass_sae, capsys, argv, message):
    assert message in one_line_error(capsys, ["index", str(glass_sae), *argv])


def test_a_run_without_a_model_is_refused(tmp_path, capsys):
    argv = ["train", "--arch", "topk", "--tokens", "2048", "--progress", "false"]
    assert main([*argv, "--out", str(tmp_path / "syn")]) == 0
    capsys.readouterr()
    err = one_line_error(capsys, ["index", str(tmp_path / "syn")])
    assert "was not trained on a model's activations" in err
    err = one_line_error(capsys, ["index", str(tmp_path / "none")])
    assert "holds no saved SAE" in err

"""`saescope eval`: which data a run is evaluated on, JSON without NaN, and --batch-size."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from saescope import TrainConfig, make_sae, train
from saescope.cli import build_parser, main
from saescope.cli.eval import finite
from saescope.cli.options import given
from saescope.data import ArticleTaskConfig
from saescope.data.cache import CacheWriter
from saescope.runs import DataSpec, Run


def _ns(*argv):
    return build_parser().parse_args(["eval", "RUN", *argv])


def eval_data(ns, run):
    """What the eval command asks the run for."""
    return run.eval_data(ns.data, ns.hook, ns.target, given(ns, ArticleTaskConfig))


def _run(data):
    return Run(Path("RUN"), {}, {}, data, None, {})


def test_a_synthetic_run_is_evaluated_on_its_own_task_with_overrides():
    own = DataSpec.synthetic(ArticleTaskConfig(d_in=6, n_features=10), seed=4)
    assert eval_data(_ns(), _run(own)) is None  # Run.evaluate then uses the run's own data
    assert eval_data(_ns("--data", "synthetic"), _run(own)) == own
    changed = eval_data(_ns("--max-active", "2"), _run(own))
    assert changed.task == ArticleTaskConfig(d_in=6, n_features=10, max_active=2)
    assert changed.seed == 4  # held-out draws still come from the run's seed + offset


def test_a_model_run_is_evaluated_on_its_held_out_text():
    own = DataSpec("model", model="glassllm", hook="layers.1", context=16)
    assert eval_data(_ns(), _run(own)) is None  # Run.evaluate then uses the run's own data


def test_a_cache_takes_the_runs_hooks_unless_given(tmp_path):
    w = CacheWriter(tmp_path / "c", {"model": "glassllm", "context": 8})

    rows = {"a": torch.zeros(7, 3), "b": torch.zeros(7, 2)}
    rows.update({k: torch.zeros(7, dtype=torch.long) for k in ("tokens", "positions", "contexts")})
    w.add(rows, 1)
    w.flush()
    own = DataSpec("model", model="glassllm", hook="a", target="b", context=8)
    got = eval_data(_ns("--data", str(tmp_path / "c")), _run(own))
    assert (got.kind, got.hook, got.target, got.rows) == ("cache", "a", "b", 7)
    got = eval_data(_ns("--data", str(tmp_path / "c"), "--hook", "b", "--target", "a"), _run(own))
    assert (got.hook, got.target) == ("b", "a")


def test_a_file_run_needs_data_and_a_file_takes_no_hook(tmp_path, capsys):
    np.save(tmp_path / "acts.npy", np.random.default_rng(0).normal(size=(600, 5)).astype("f4"))
    argv = ["train", "--arch", "relu", "--data", str(tmp_path / "acts.npy"), "--steps", "3"]
    assert main([*argv, "--out", str(tmp_path / "r"), "--progress", "0"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no held-out part" in err and "--data FILE" in err and "\n" not in err
    assert main(["eval", str(tmp_path / "r"), "--data", str(tmp_path / "acts.npy"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_tokens"] == 600
    acts = str(tmp_path / "acts.npy")
    assert main(["eval", str(tmp_path / "r"), "--data", acts, "--hook", "x"]) == 2
    assert "--hook" in capsys.readouterr().err


def test_a_run_made_through_the_api_needs_data(tmp_path, capsys):
    sae = make_sae({"architecture": "relu", "d_in": 5, "d_sae": 10})
    acts = torch.randn(256, 5)
    train(sae, [acts] * 3, TrainConfig(steps=3, progress=False), out_dir=tmp_path / "r")
    assert main(["eval", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not record what it was trained on" in err and "--data FILE" in err
    assert "\n" not in err and "d_in" not in err


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_json_has_null_for_numbers_json_lacks(bad):
    assert finite({"a": bad, "b": {"c": bad, "d": 1.5}}) == {"a": None, "b": {"c": None, "d": 1.5}}


def test_batch_size_is_contexts_per_pass_and_changes_no_number(tmp_path, capsys):
    assert _ns().batch_size is None and _ns("--batch-size", "3").batch_size == 3  # None: auto
    text = tmp_path / "alice.txt"
    text.write_text(
        " ".join(f"Alice counted {i} hedgehogs and {i * 7 % 13} flamingos." for i in range(120))
    )
    run = str(tmp_path / "run")
    argv = ["train", "--arch", "topk", "--model", "glassllm", "--hook", "layers.1"]
    argv += ["--text", str(text), "--context", "16", "--steps", "3", "--batch-size", "64"]
    assert main([*argv, "--d-sae", "256", "--out", run, "--progress", "0"]) == 0
    capsys.readouterr()
    got = {}
    for batch_size in (1, 64):
        assert main(["eval", run, "--tokens", "60", "--batch-size", str(batch_size), "--json"]) == 0
        got[batch_size] = json.loads(capsys.readouterr().out)
    assert got[1]["n_tokens"] == 60 and got[1]["ce_zero"] > got[1]["ce_clean"]
    for key in ("mse", "l0", "ce_clean", "ce_spliced", "ce_zero", "kl_div", "ce_loss_recovered"):
        assert got[1][key] == pytest.approx(got[64][key], rel=1e-5), key
    assert main(["eval", run, "--batch-size", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--batch-size of at least 1" in err and "\n" not in err

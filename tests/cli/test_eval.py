"""`saescope eval`: which data a run is evaluated on, JSON without NaN, and --batch-size."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from saescope import TrainConfig, make_sae, train
from saescope.cli import build_parser, main
from saescope.cli.eval import finite, outlier_line
from saescope.cli.options import given
from saescope.data import ArticleTask, ArticleTaskConfig
from saescope.data.cache import CacheWriter
from saescope.runs import DataSpec, Run
from tests.cli.common import one_line_error


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


@pytest.fixture(scope="module")
def outlier_runs(tmp_path_factory):
    """Runs on a file whose every 1000th row is 100x the others (0.1%): trained with the
    default outlier rule and with --keep-outliers; each with its training and eval metrics."""
    tmp = tmp_path_factory.mktemp("outliers")
    task = ArticleTask(ArticleTaskConfig(d_in=16, n_features=32, max_active=3), 20_000, 0)
    x = torch.cat([task.batch(0)[0], task.batch(1)[0]])
    x[::1000] *= 100
    np.save(tmp / "acts.npy", x.numpy())
    out = {}
    for name, extra in (("default", []), ("off", ["--keep-outliers"])):
        argv = ["train", "--arch", "topk", "--k", "4", "--data", str(tmp / "acts.npy")]
        argv += ["--steps", "300", "--batch-size", "1024", "--progress", "0"]
        assert main([*argv, "--out", str(tmp / name), *extra]) == 0
        meta = json.loads((tmp / name / "cfg.json").read_text())["metadata"]
        got = Run.open(tmp / name).evaluate(data=DataSpec.at(tmp / "acts.npy"), plot=False)
        out[name] = (meta, next(iter(got.values())))
    return out


@pytest.mark.slow
def test_training_and_eval_agree_when_outliers_are_set_aside(outlier_runs):
    meta, ev = outlier_runs["default"]
    assert meta["outliers"]["set_aside"] == pytest.approx(0.001 * 300 * 1024, rel=0.3)
    assert ev["outliers"] == 40 and ev["n_tokens"] == 39_960
    train_ev = meta["final_metrics"]["explained_variance"]
    assert abs(train_ev - ev["explained_variance"]) <= 0.02, (train_ev, ev)
    every = ev["with_outliers"]
    assert every["n_tokens"] == 40_000
    # The 40 rows move the figure: that is why they are set aside and reported apart.
    assert abs(every["explained_variance"] - ev["explained_variance"]) > 0.01
    assert every["mse"] > 5 * ev["mse"]


@pytest.mark.slow
def test_with_outliers_kept_eval_reports_every_token(outlier_runs, capsys):
    meta, ev = outlier_runs["off"]
    assert meta["outliers"] is None and meta["training"]["outlier_factor"] is None
    assert "outliers" not in ev and "with_outliers" not in ev and ev["n_tokens"] == 40_000


def test_eval_prints_what_setting_outliers_aside_changed(outlier_runs, capsys):
    _, ev = outlier_runs["default"]
    line = outlier_line({"sae": "run", **ev})
    assert line.startswith("run: 40 of 40000 tokens set aside as outliers (norm above 10x")
    assert f"{ev['with_outliers']['explained_variance']:.4g}" in line


def test_an_unknown_suite_is_one_line_listing_the_known(capsys):
    err = one_line_error(capsys, ["eval", "RUN", "--suite", "core,probes"])
    assert "'probes'" in err and "core, probing, absorption" in err


def test_absorption_on_a_run_without_a_tokenizer_is_one_line(tmp_path, capsys):
    np.save(tmp_path / "acts.npy", np.random.default_rng(0).normal(size=(300, 5)).astype("f4"))
    argv = ["train", "--arch", "relu", "--data", str(tmp_path / "acts.npy"), "--steps", "2"]
    assert main([*argv, "--out", str(tmp_path / "r"), "--progress", "0"]) == 0
    capsys.readouterr()
    err = one_line_error(capsys, ["eval", str(tmp_path / "r"), "--suite", "absorption"])
    assert "absorption suite needs a run trained on a language model" in err


@pytest.mark.slow
def test_probing_and_absorption_suites_on_a_glassllm_run(glass_sae, capsys):
    argv = ["eval", str(glass_sae), "--suite", "probing,absorption", "--json"]
    assert main([*argv, "--probe-contexts", "4", "--absorption-words", "60"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert list(got) == ["probing", "absorption"]
    (probing,) = got["probing"].values()
    assert set(probing["mean"]) == {"raw", "sae_1", "sae_2", "sae_5"}
    assert all(t["n_train"] == 8 and t["n_test"] == 4 for t in probing["tasks"].values())
    (absorption,) = got["absorption"].values()
    assert absorption["n_words"] == 60 and absorption["n_test"] == 12
    assert set(absorption) >= {"mean_absorption", "mean_fraction", "probe_accuracy", "classes"}

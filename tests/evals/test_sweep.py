"""`evals.sweep`: architectures x target L0s trained in one pass over one stream (each batch
read once), evaluated, written as a table, plots and run folders every command opens;
resumed after a crash to the same SAEs; the plan's one-line errors."""

import csv
import json

import numpy as np
import pytest
import torch

from saescope.data import ArticleTaskConfig
from saescope.data.synthetic import GroundTruthTask
from saescope.errors import ConfigError
from saescope.evals.sweep import SweepPlan, recorded_plan, resume_sweep, sweep
from saescope.runs import DataSpec, Run
from saescope.saes import SAE
from saescope.training import TrainConfig

TASK = ArticleTaskConfig(n_features=12, d_in=6)
STEPS = 12


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(steps=STEPS, progress=False, init_samples=256, **kw)


def _sweep(out, plan=None, **kw):
    plan = plan or SweepPlan.parse("topk,relu", "2,3")
    data = DataSpec.synthetic(TASK, seed=5)
    return sweep(plan, data, out, _cfg(**kw), batch_size=128, d_sae=24, eval_tokens=1024)


@pytest.fixture
def reads(monkeypatch):
    """The batch indices each synthetic stream (by seed) is asked for."""
    asked: dict[int, list[int]] = {}
    original = GroundTruthTask.batch_with_truth

    def counted(self, i):
        asked.setdefault(self.seed, []).append(i)
        return original(self, i)

    monkeypatch.setattr(GroundTruthTask, "batch_with_truth", counted)
    return asked


def test_sweep_writes_folders_table_and_plots_in_one_pass(tmp_path, reads):
    out = tmp_path / "sw"
    result = _sweep(out)
    # one pass: the training stream gave each batch once, whatever the number of SAEs
    assert reads[5] == list(range(STEPS))
    pairs = [(r["architecture"], r["target_l0"]) for r in result.rows]
    assert pairs == [("topk", 2), ("topk", 3), ("relu", 2), ("relu", 3)]
    with open(out / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["sae"], r["architecture"], r["target_l0"]) for r in table] == [
        (f"sae_{i}", a, str(t)) for i, (a, t) in enumerate(pairs)
    ]
    for r in table:
        assert 0 <= float(r["dead_fraction"]) <= 1 and float(r["l0"]) > 0
        assert float(r["explained_variance"]) <= 1
    assert (out / "sweep.md").read_text().startswith("| sae | architecture | target_l0 |")
    png = out / "pareto_explained_variance.png"
    assert result.plots == {"explained_variance": png}
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert not (out / "pareto_ce_loss_recovered.png").exists()  # no model: no CE
    assert json.loads((out / "sweep.json").read_text())["rows"][0]["sae"] == "sae_0"
    run = Run.open(out)
    assert set(run.saes) == {f"sae_{i}" for i in range(4)}
    assert run.data == DataSpec.synthetic(TASK, seed=5)
    for i, (arch, target) in enumerate(pairs):
        one = Run.open(out / f"sae_{i}")
        sae = next(iter(one.saes.values()))
        assert (sae.cfg.name, sae.cfg.target_l0, sae.cfg.d_sae) == (arch, target, 24)
        if arch == "topk":
            assert sae.cfg.k == target and result.rows[i]["l0"] == pytest.approx(target)
        else:  # the controller's coefficient reached is in the table
            assert result.rows[i]["coefficient"].startswith("l1_coef=")
    assert recorded_plan(out) == SweepPlan(("topk", "relu"), (2, 3))


def test_killed_sweep_resumes_to_the_uninterrupted_sweeps_saes(tmp_path, monkeypatch):
    whole = _sweep(tmp_path / "whole", checkpoint_every=4)
    original = GroundTruthTask.batch_with_truth

    def crash(self, i):
        if self.seed == 5 and i == 9:
            raise RuntimeError("killed")
        return original(self, i)

    monkeypatch.setattr(GroundTruthTask, "batch_with_truth", crash)
    with pytest.raises(RuntimeError, match="killed"):
        _sweep(tmp_path / "cut", checkpoint_every=4)
    assert not (tmp_path / "cut" / "sweep.csv").exists()
    monkeypatch.setattr(GroundTruthTask, "batch_with_truth", original)
    with pytest.raises(ConfigError, match="resume it with those"):
        resume_sweep(tmp_path / "cut", SweepPlan.parse("topk", "2,3"))
    plan = SweepPlan.parse("topk,relu", "2,3")
    got = resume_sweep(tmp_path / "cut", plan, eval_tokens=1024, progress=False)
    for i in range(4):
        a, b = (SAE.load(tmp_path / d / f"sae_{i}") for d in ("whole", "cut"))
        for name, p in a.state_dict().items():
            torch.testing.assert_close(b.state_dict()[name], p, rtol=0, atol=0)
    assert [r["l0"] for r in got.rows] == [r["l0"] for r in whole.rows]


@pytest.mark.parametrize(
    ("archs", "targets", "message"),
    [
        ("topk,nope,relux", "4", "unknown architecture 'nope', 'relux'; known: relu, topk"),
        ("topk,topk", "4", "--arch names topk more than once"),
        ("topk", "4,8,4", "--target-l0 names 4 more than once"),
        ("topk", "4,0", "a target L0 must be above 0, got 0"),
        ("topk", "-2", "above 0"),
        ("topk", "4,x", "takes numbers separated by commas, got 'x'"),
        ("", "4", "give --arch"),
        ("topk", "", "give --target-l0"),
    ],
)
def test_plan_errors(archs, targets, message):
    with pytest.raises(ConfigError, match=message) as e:
        SweepPlan.parse(archs, targets)
    assert "\n" not in str(e.value)


def test_plan_pairs_and_target_at_or_above_d_sae():
    plan = SweepPlan.parse(["relu", "gated"], [8, 2.5])
    assert plan.pairs == [("relu", 8), ("relu", 2.5), ("gated", 8), ("gated", 2.5)]
    plan.check(9)
    with pytest.raises(ConfigError, match=r"target L0 8 is not below d_sae=8; .* --d-sae"):
        plan.check(8)


def test_a_file_sweep_is_evaluated_on_the_files_first_rows(tmp_path):
    acts = tmp_path / "acts.npy"
    np.save(acts, np.random.default_rng(0).standard_normal((2048, 6)).astype(np.float32))
    plan = SweepPlan.parse("topk", "2")
    cfg = _cfg()
    got = sweep(plan, DataSpec.file(acts), tmp_path / "sw", cfg, batch_size=128, eval_tokens=512)
    assert got.rows[0]["held_out"] is False and got.rows[0]["l0"] == 2

"""Optional loggers beside metrics.jsonl: TensorBoard event files hold every logged number at
its step (read back with TensorBoard's own reader), one folder per SAE of several; a resumed
run's curves do not double back; the logger choice never stops a resume; a missing package,
an unknown logger or no run folder are refused before training."""

import json
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from saescope.data import ArticleTask, ArticleTaskConfig
from saescope.errors import ConfigError, InputError
from saescope.saes import make_sae
from saescope.training import TrainConfig, train
from saescope.training.logs import TENSORBOARD_DIR, TensorBoardLog, check

TASK = ArticleTask(ArticleTaskConfig(), batch_size=64)
SAME = ("loss", "l0", "explained_variance", "dead_fraction", "tokens")
"""Metrics a resumed run repeats exactly (wall-clock ones differ)."""


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 6, "progress": False, "init_samples": 64, "log_every": 2, **kw})


def _sae(k: int = 2):
    torch.manual_seed(0)
    return make_sae({"architecture": "topk", "d_in": 4, "d_sae": 16, "k": k})


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def _jsonl(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_holds_every_logged_number(tmp_path):
    train(_sae(), TASK, _cfg(), tmp_path / "run", log=["tensorboard"])
    rows = _jsonl(tmp_path / "run")
    got = _scalars(tmp_path / "run" / TENSORBOARD_DIR)
    numbers = [
        k
        for k, v in rows[0].items()
        if k not in ("sae", "step") and isinstance(v, int | float) and not isinstance(v, bool)
    ]
    assert {"l0", "explained_variance", "dead_fraction", "loss", "tokens"} <= set(numbers)
    assert set(got) == set(numbers)
    for key in numbers:
        assert [s for s, _ in got[key]] == [2, 4, 6], key
        expected = [r[key] for r in rows]
        assert [v for _, v in got[key]] == pytest.approx(expected, rel=1e-6), key  # float32


def test_several_saes_write_one_folder_each(tmp_path):
    train([_sae(1), _sae(3)], TASK, _cfg(), tmp_path / "run", log=["tensorboard"])
    rows = _jsonl(tmp_path / "run")
    for i in (0, 1):
        got = _scalars(tmp_path / "run" / TENSORBOARD_DIR / f"sae_{i}")
        assert [v for _, v in got["l0"]] == pytest.approx([r["l0"] for r in rows if r["sae"] == i])
    assert got["l0"] != _scalars(tmp_path / "run" / TENSORBOARD_DIR / "sae_0")["l0"]


def test_a_resumed_run_logs_each_step_once_and_loggers_may_change(tmp_path):
    run, full = tmp_path / "run", tmp_path / "full"
    batches = [TASK.batch(i)[0] for i in range(6)]
    cfg = _cfg(log_every=1, checkpoint_every=2)
    with pytest.raises(InputError, match="ended after 5 batches"):  # logged step 5, saved at 4
        train(_sae(), batches[:5], cfg, run, log=["tensorboard"])
    train(_sae(), batches, cfg, run, resume=True, log=["tensorboard"])
    train(_sae(), batches, cfg, full, log=["tensorboard"])
    got, want = _scalars(run / TENSORBOARD_DIR), _scalars(full / TENSORBOARD_DIR)
    assert [s for s, _ in got["loss"]] == [1, 2, 3, 4, 5, 6]  # step 5 once: purged, relogged
    assert {k: got[k] for k in SAME} == {k: want[k] for k in SAME}
    # The choice of loggers is no training setting: resuming with none, or with one, is fine.
    resumed = tmp_path / "other"
    with pytest.raises(InputError):
        train(_sae(), batches[:3], cfg, resumed)
    train(_sae(), batches, cfg, resumed, resume=True, log=["tensorboard"])
    assert [s for s, _ in _scalars(resumed / TENSORBOARD_DIR)["loss"]] == [3, 4, 5, 6]
    assert [[r[k] for k in SAME] for r in _jsonl(resumed)] == [
        [r[k] for k in SAME] for r in _jsonl(full)
    ]


def test_bad_loggers_are_refused_before_training(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"unknown logger 'wandb'; choose from tensorboard"):
        train(_sae(), TASK, _cfg(), tmp_path / "a", log=["wandb"])
    with pytest.raises(ConfigError, match="writes into the run folder; give out_dir"):
        train(_sae(), TASK, _cfg(), None, log=["tensorboard"])
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(ConfigError) as e:
        train(_sae(), TASK, _cfg(), tmp_path / "b", log=["tensorboard"])
    assert str(e.value) == (
        "--log tensorboard needs the tensorboard package: pip install saescope[tensorboard]"
    )
    with pytest.raises(ConfigError, match="pip install saescope"):
        TensorBoardLog(tmp_path, 1)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    check([], None)  # no loggers: nothing to check

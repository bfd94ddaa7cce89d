"""TrainConfig: its schedules and validation."""

import pytest
import torch

from saescope.cli import main
from saescope.errors import ConfigError
from saescope.training import TrainConfig


def test_lr_schedule_warmup_and_decay():
    cfg = TrainConfig(steps=100, lr_warmup=0.1, lr_decay_start=0.8)
    assert cfg.lr_factor(0) == pytest.approx(0.1)
    assert cfg.lr_factor(9) == pytest.approx(1.0)
    assert cfg.lr_factor(50) == 1.0
    assert cfg.lr_factor(90) == pytest.approx(0.5)
    assert cfg.lr_factor(99) == pytest.approx(0.05)
    assert cfg.sparsity_factor(0) == pytest.approx(1 / 5)
    assert cfg.sparsity_factor(60) == 1.0


def test_dead_window_and_resample_period_follow_the_run():
    cfg = TrainConfig(steps=600)
    assert cfg.dead_window(1024) == 600 * 1024 // 10  # a tenth of the run's tokens
    assert TrainConfig(steps=10**6).dead_window(4096) == 10_000_000  # capped at 10M
    assert TrainConfig(steps=600, dead_tokens=77).dead_window(1024) == 77
    assert cfg.resample_period() == 50  # a twelfth of the steps
    assert TrainConfig(steps=600, resample_every=0).resample_period() == 0
    assert TrainConfig(steps=600, resample_every=7).resample_period() == 7


def test_resampling_has_a_third_of_the_dead_window_unless_one_is_given():
    cfg = TrainConfig()  # 3,000 steps: 100 steps of 1,024 tokens
    assert cfg.resample_window(1024) == 102_400 == cfg.dead_window(1024) // 3
    assert TrainConfig(steps=10**6).resample_window(4096) == 10_000_000 // 3
    assert TrainConfig(steps=1).resample_window(1) == 1
    given = TrainConfig(steps=600, dead_tokens=77)  # given: one window for both, as before
    assert given.resample_window(1024) == given.dead_window(1024) == 77


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("steps", 0, "steps must be >= 1"),
        ("lr", 0.0, "lr must be > 0"),
        ("lr_warmup", 1.5, "lr_warmup must be a fraction"),
        ("b_dec_init", "median", "b_dec_init must be"),
        ("log_every", 0, "log_every must be >= 1"),
        ("init_samples", 0, "init_samples must be >= 1"),
    ],
)
def test_bad_settings_are_named(field, value, says):
    with pytest.raises(ConfigError, match=says):
        TrainConfig(**{field: value})


@pytest.mark.parametrize(
    ("device", "says"),
    [("gpu", "'gpu' is not a torch device"), ("cuda:99", "'cuda:99' is not available")],
)
def test_a_device_this_build_cannot_use_is_named(device, says):
    with pytest.raises(ConfigError, match=says) as e:
        TrainConfig(device=device)
    assert ("\n" not in str(e.value) and "--device cpu" in str(e.value)) or "cuda:N" in str(e.value)


def test_cuda_without_cuda_is_one_line_from_the_cli(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda is valid here")
    argv = ["train", "--arch", "relu", "--steps", "2", "--out", str(tmp_path / "r")]
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'cuda' is not available" in err and "--device cpu" in err
    assert "Traceback" not in err

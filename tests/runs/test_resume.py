"""Resuming a run with the settings it recorded (`Recorded`, `resume_run`): nothing to retype,
a given setting checked against the run's with a one-line error naming it and both values,
how the run is watched and saved free to change, and checkpoints older than the batch size's
record still resumed."""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open

from saescope.atomic import atomic_save_tensors
from saescope.errors import ConfigError, FormatError, InputError
from saescope.runs import DataSpec, Given, Recorded, build_sae, resume_run, train_run
from saescope.saes import make_sae
from saescope.training import CHECKPOINT_FILE, METRICS_FILE, TrainConfig, train
from saescope.training.checkpoint import read_meta
from saescope.training.config import default_lr

CFG = TrainConfig(steps=12, checkpoint_every=4, log_every=2, init_samples=64, progress=False)


@pytest.fixture
def acts(tmp_path) -> DataSpec:
    rows = np.random.default_rng(0).normal(size=(1024, 6)).astype(np.float32)
    np.save(tmp_path / "acts.npy", rows)
    return DataSpec.file(tmp_path / "acts.npy", seed=3)


class Ending:
    """A stream that ends after `n` batches, as if the run were killed there."""

    def __init__(self, stream, n: int) -> None:
        self.stream, self.n, self.batch_size = stream, n, stream.batch_size

    def iter_from(self, start: int):
        return (self.stream.batch(i) for i in range(start, self.n))


def _crashed(spec: DataSpec, out) -> None:
    """A run killed after its checkpoint at step 4 (its stream ends after 6 batches)."""
    stream = spec.open(batch_size=64)
    torch.manual_seed(0)
    model = build_sae("topk", stream, k=3, d_sae=24)
    with pytest.raises(InputError):
        train_run(model, spec, Ending(stream, 6), CFG, out)
    assert read_meta(out)["step"] == 4


def _finished(spec: DataSpec, out) -> torch.Tensor:
    stream = spec.open(batch_size=64)
    torch.manual_seed(0)
    model = build_sae("topk", stream, k=3, d_sae=24)
    return train_run(model, spec, stream, CFG, out).saes[0].W_enc


def test_resume_run_needs_nothing_but_the_folder(tmp_path, acts):
    _crashed(acts, tmp_path / "run")
    recorded = Recorded.read(tmp_path / "run")
    settled = dataclasses.replace(  # auto: what it picked; no lr: the rate it used
        CFG, precision=recorded.train.precision, lr=default_lr(24)
    )
    assert recorded.train.precision in ("fp32", "bf16")
    assert (recorded.data, recorded.batch_size, recorded.train) == (acts, 64, settled)
    assert recorded.saes[0]["k"] == 3 and recorded.saes[0]["architecture"] == "topk"
    given = Given(train={"log_every": 3, "progress": False, "checkpoint_minutes": 1.0})
    resumed = resume_run(tmp_path / "run", given)
    assert torch.equal(resumed.saes[0].W_enc, _finished(acts, tmp_path / "ref"))
    rows = (tmp_path / "run" / METRICS_FILE).read_text().splitlines()
    steps = [json.loads(r)["step"] for r in rows]
    assert steps == [2, 4, 6, 9, 12]  # every 2 steps, then every 3 (a neutral setting)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (Given(arch="relu"), "arch is topk in the run, relu here"),
        (Given(sae={"k": 4}), "k is 3 in the run, 4 here"),
        (Given(sae={"d_sae": 48}), "d_sae is 24 in the run, 48 here"),
        (
            Given(train={"lr": 0.01}),
            f"lr is {re.escape(str(default_lr(24)))} in the run, 0.01 here",
        ),
        (Given(train={"seed": 1}), "seed is 0 in the run, 1 here"),
        (Given(batch_size=32), "batch_size is 64 in the run, 32 here"),
        (Given(tokens=64 * 20), r"tokens is 768 \(12 steps\) in the run, 1280 \(20 steps\) here"),
        (Given(data={"data": "synthetic"}), "data is /.*acts.npy in the run, synthetic here"),
        (Given(data={"task": {"n_features": 5}}), "n_features is none in the run, 5 here"),
    ],
)
def test_a_setting_other_than_the_runs_is_named_with_both_values(tmp_path, acts, given, message):
    _crashed(acts, tmp_path / "run")
    with pytest.raises(ConfigError, match=f"^cannot resume: {message}; resume with the run's"):
        resume_run(tmp_path / "run", given)


def test_the_runs_own_settings_given_again_are_accepted(tmp_path, acts):
    _crashed(acts, tmp_path / "run")
    path = str(tmp_path / "acts.npy")
    given = Given("topk", {"k": 3, "d_sae": 24}, {"data": path}, 64, 12 * 64, {"seed": 0})
    assert resume_run(tmp_path / "run", given).final_metrics[0]["step"] == 12


def test_model_options_are_compared_with_the_recorded_spec():
    spec = DataSpec("model", model="glassllm", hook="layers.2", context=128, fingerprint="f")
    recorded = Recorded(({"architecture": "topk", "k": 32},), spec, 1016, TrainConfig())
    recorded.check(Given(data={"model": "glassllm", "hook": "layers.2", "context": 128}))
    for options, message in [
        ({"context": 64}, "context is 128 in the run, 64 here"),
        ({"hook": "layers.1"}, "hook is layers.2 in the run, layers.1 here"),
        ({"target": "layers.3"}, "target is none in the run, layers.3 here"),
        ({"model": "minilm"}, "model is glassllm in the run, minilm here"),
        ({"text": "a.txt"}, "text is none in the run, /.*a.txt here"),
        ({"data": "synthetic"}, "data is glassllm \\(on the fly\\) in the run, synthetic here"),
    ]:
        with pytest.raises(ConfigError, match=message):
            recorded.check(Given(data=options))
    with pytest.raises(ConfigError, match="l1_coef does not apply to the run's topk"):
        recorded.check(Given(sae={"l1_coef": 1.0}))


def test_a_field_written_only_when_set_compares_with_its_default():
    """target_l0 is left out of cfg.json when not set: a run without one, resumed with one,
    says both values (not that the field does not apply)."""
    spec = DataSpec("synthetic")
    recorded = Recorded(({"architecture": "relu", "l1_coef": 1.0},), spec, 256, TrainConfig())
    recorded.check(Given(sae={"target_l0": None}))
    with pytest.raises(ConfigError, match=r"target_l0 is none in the run, 2(\.0)? here"):
        recorded.check(Given(sae={"target_l0": 2.0}))


def test_a_checkpoint_without_the_batch_size_resumes(tmp_path, acts):
    """Checkpoints written before the batch size was recorded: tokens / steps gives it."""
    _crashed(acts, tmp_path / "run")
    path = tmp_path / "run" / CHECKPOINT_FILE
    with safe_open(str(path), "pt") as fh:
        meta = json.loads(fh.metadata()["saescope_checkpoint"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    del meta["run"]["batch_size"], meta["train"]["checkpoint_minutes"]
    atomic_save_tensors(path, tensors, {"saescope_checkpoint": json.dumps(meta)})
    assert Recorded.read(tmp_path / "run").batch_size == 64
    resumed = resume_run(tmp_path / "run")
    assert torch.equal(resumed.saes[0].W_enc, _finished(acts, tmp_path / "ref"))


def test_a_checkpoint_that_does_not_name_its_data_is_refused_clearly(tmp_path):
    rows = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    sae = make_sae({"architecture": "relu", "d_in": 4, "d_sae": 8})
    train(sae, [rows, rows], dataclasses.replace(CFG, steps=2), tmp_path)  # no record of data
    with pytest.raises(FormatError, match=r"does not record its data .* resume=True"):
        resume_run(tmp_path)
    with pytest.raises(FormatError, match="nothing to resume"):
        resume_run(tmp_path / "elsewhere")

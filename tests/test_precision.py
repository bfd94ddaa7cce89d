"""--precision: what auto picks (the probe's answer forced), bad input in one line, and the
model's forward in bf16 with float32 activations handed to hooks."""

import pytest
import torch

from saescope import lowp, precision
from saescope.cli import main
from saescope.errors import ConfigError
from saescope.models.hooks import attached


@pytest.fixture
def unforced(monkeypatch):
    monkeypatch.delenv(lowp.PROBE_ENV, raising=False)


def test_auto_picks_fp32_where_bf16_is_slow_and_bf16_where_fast(unforced):
    slow = precision.resolve("auto", "cpu", speedup=0.2)
    assert slow.name == "fp32" and "0.20x" in slow.reason
    fast = precision.resolve("auto", "cpu", speedup=2.3)
    assert fast.name == "bf16" and "2.30x" in fast.line()
    assert precision.resolve("auto", "cpu", speedup=1.2).name == "fp32"  # not clearly faster
    assert precision.resolve("fp32", "cpu", speedup=9.0).name == "fp32"


def test_the_environment_forces_the_probe(monkeypatch):
    monkeypatch.setenv(lowp.PROBE_ENV, "0.1")
    assert precision.resolve("auto", "cpu").name == "fp32"
    monkeypatch.setenv(lowp.PROBE_ENV, "2.0")
    assert precision.resolve("auto", "cpu").name == "bf16"


def test_a_cpu_without_bf16_flags_gets_fp32_untimed(unforced, monkeypatch):
    monkeypatch.setattr(lowp, "native_bf16_flags", lambda: [])

    def never(*_a, **_k):
        raise AssertionError("timed a CPU that has no bf16 flag")

    monkeypatch.setattr(lowp, "measured_speedup", never)
    choice = precision.resolve("auto", "cpu")
    assert choice.name == "fp32" and "avx512_bf16" in choice.reason
    asked = precision.resolve("bf16", "cpu")  # runs, but says it is not native
    assert asked.name == "bf16" and not asked.native
    with pytest.warns(precision.SlowPrecisionWarning, match="--precision auto"):
        precision.warn_slow(asked)


def test_bad_precisions_are_one_line_errors():
    with pytest.raises(ConfigError, match="1 GFLOP/s"):
        precision.resolve("fp16", "cpu")
    with pytest.raises(ConfigError, match="give fp32, bf16 or auto"):
        precision.resolve("int8", "cpu")


def test_bf16_on_a_cuda_device_without_it_names_auto(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(ConfigError, match=r"does not support bfloat16.*auto"):
        precision.resolve("bf16", "cuda")
    assert precision.resolve("auto", "cuda").name == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.resolve("auto", "cuda").name == "bf16"


def test_harvest_refuses_fp16_in_one_line(tmp_path, capsys):
    argv = ["harvest", "--model", "glassllm", "--hooks", "layers.2", "--out", str(tmp_path / "c")]
    assert main([*argv, "--precision", "fp16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1 GFLOP/s" in err


def test_a_model_runs_in_bf16_only_within_the_block_and_hooks_see_float32(glass):
    model, _ = glass
    ids = torch.randint(0, 1000, (1, 12))
    seen = []

    def look(x, _clean):
        seen.append((x.dtype, torch.is_autocast_enabled("cpu")))

    with torch.no_grad(), attached(model, {"layers.1.mlp": look}):
        fp32 = model(ids)
        with precision.model_precision("bf16"):
            bf16 = model(ids)
        again = model(ids)
    assert torch.equal(fp32, again)  # the block ended: float32 again
    assert not torch.equal(fp32, bf16)
    torch.testing.assert_close(bf16.float(), fp32, atol=0.3, rtol=0.05)
    assert seen == [(torch.float32, False)] * 3  # the hook: float32, autocast off
    with pytest.raises(ConfigError, match="resolve auto first"):
        with precision.model_precision("auto"):
            pass


def test_a_deep_copy_of_a_following_model_runs_its_own_weights(glass):
    import copy

    model, _ = glass
    twin = copy.deepcopy(model).to(torch.float64)
    ids = torch.randint(0, 1000, (1, 8))
    with torch.no_grad():
        assert twin(ids).dtype == torch.float64  # not the original's float32 forward
    assert type(twin).__name__ == type(model).__name__ == "GlassLM"

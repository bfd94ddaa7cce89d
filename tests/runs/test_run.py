"""`Run`: opening a trained run (one SAE, or several in sae_0, sae_1, ...), evaluating it on its
own held-out data (synthetic, a glassllm text) or on given data; `build_sae` and
`steps_for_tokens`."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saescope.data import ActivationFile, ArticleTask, ArticleTaskConfig
from saescope.errors import ConfigError, InputError
from saescope.runs import (
    DataSpec,
    Run,
    build_sae,
    harvest,
    sae_folders,
    steps_for_tokens,
    train_run,
)
from saescope.saes import ReLUSAE, TopKSAE, make_sae
from saescope.training import TrainConfig

PNG = b"\x89PNG\r\n\x1a\n"
TEXT = " ".join(
    f"The Queen had {i} soldiers, {i * 5 % 11} gardeners and {i * i % 19} flamingos."
    for i in range(50)
)
CFG = TrainConfig(steps=5, progress=False, init_samples=64)


def _synthetic_run(path, archs=("topk",)):
    spec = DataSpec.synthetic(ArticleTaskConfig(), seed=1)
    stream = spec.open(batch_size=64)
    saes = [build_sae(a, stream, d_sae=16) for a in archs]
    result = train_run(saes[0] if len(saes) == 1 else saes, spec, stream, CFG, path)
    return spec, result


@pytest.fixture(scope="module")
def glass_run(tmp_path_factory):
    """A glassllm run of 5 steps on a small text, trained once for the module."""
    tmp = tmp_path_factory.mktemp("glass")
    text = tmp / "queen.txt"
    text.write_text(TEXT)
    spec = DataSpec.for_model("glassllm", "layers.1", text=[text], context=16)
    stream = spec.open(batch_size=60)
    torch.manual_seed(0)
    sae = build_sae("topk", stream, d_sae=256, k=8)
    train_run(sae, spec, stream, CFG, tmp / "glass")
    return spec, tmp / "glass"


# ----- opening ------------------------------------------------------------------------------------


def test_open_a_single_sae_run(tmp_path):
    spec, result = _synthetic_run(tmp_path / "run")
    run = Run.open(tmp_path / "run")
    assert run.path == tmp_path / "run"
    assert list(run.saes) == ["run"] and run.dirs == {"run": tmp_path / "run"}
    sae = run.saes["run"]
    assert isinstance(sae, TopKSAE) and not sae.training and sae.cfg == result.saes[0].cfg
    x = torch.randn(10, 4)
    torch.testing.assert_close(sae(x), result.saes[0](x), rtol=0, atol=0)
    # cfg.json records the learning rate the run used (CFG leaves it to the default rule)
    settled = run.train.precision  # auto, recorded as what it picked
    assert run.data == spec and run.train == replace(CFG, lr=CFG.lr_for(sae), precision=settled)
    assert run.metadata["data"] == spec.to_dict() and "normalisation" in run.metadata


def test_open_a_run_of_several_saes(tmp_path):
    spec, result = _synthetic_run(tmp_path / "sweep", archs=("topk", "relu"))
    run = Run.open(tmp_path / "sweep")
    assert list(run.saes) == ["sae_0", "sae_1"]
    assert run.dirs == {f"sae_{i}": tmp_path / "sweep" / f"sae_{i}" for i in range(2)}
    assert isinstance(run.saes["sae_0"], TopKSAE) and isinstance(run.saes["sae_1"], ReLUSAE)
    assert run.saes["sae_1"].cfg == result.saes[1].cfg
    lr, settled = CFG.lr_for(run.saes["sae_0"]), run.train.precision
    assert run.data == spec and run.train == replace(CFG, lr=lr, precision=settled)


def test_a_folder_without_a_saved_sae_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    for path in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(ConfigError, match=r"holds no saved SAE .*made by saescope train") as e:
            Run.open(path)
        assert str(path) in str(e.value)


def test_a_bare_saved_sae_opens_without_data(tmp_path):
    make_sae({"architecture": "relu", "d_in": 4, "d_sae": 8}).save(tmp_path / "bare")
    run = Run.open(tmp_path / "bare")
    assert run.data is None and run.train is None and run.metadata == {}
    with pytest.raises(ConfigError, match="does not name its data; give --data FILE"):
        run.evaluate()
    with pytest.raises(ConfigError, match="does not say what it was trained on"):
        run.model  # noqa: B018
    got = run.evaluate(tokens=100, data=DataSpec.synthetic())
    assert got["bare"]["n_tokens"] == 100 and "mmcs" in got["bare"]


def test_sae_folders_lists_a_folders_saved_saes_without_loading_them(tmp_path):
    sae = make_sae({"architecture": "relu", "d_in": 4, "d_sae": 8})
    sae.save(tmp_path / "one")
    for name in ("sae_1", "sae_0", "sae_x"):
        sae.save(tmp_path / "many" / name)
    (tmp_path / "many" / "sae_2").mkdir()  # no cfg.json: not a saved SAE
    (tmp_path / "many" / "other").mkdir()
    assert sae_folders(tmp_path / "one") == [tmp_path / "one"]
    assert sae_folders(str(tmp_path / "many")) == [
        tmp_path / "many" / n for n in ("sae_0", "sae_1", "sae_x")
    ]
    assert sae_folders(tmp_path / "many" / "other") == []
    assert sae_folders(tmp_path / "missing") == []
    assert list(Run.open(tmp_path / "many").saes) == ["sae_0", "sae_1", "sae_x"]


# ----- evaluating ---------------------------------------------------------------------------------


def test_evaluate_a_synthetic_run_on_held_out_draws(tmp_path):
    _synthetic_run(tmp_path / "sweep", archs=("topk", "relu"))
    out = Run.open(tmp_path / "sweep").evaluate(tokens=300)
    assert list(out) == ["sae_0", "sae_1"]
    for name, got in out.items():
        assert got["n_tokens"] == 300 and 0 <= got["mmcs"] <= 1 + 1e-6
        assert got["min_feature_cosine"] <= got["mmcs"]
        assert "density" not in got and "density_plot" not in got and "held_out" not in got
        assert not (tmp_path / "sweep" / name / "feature_density.png").exists()
    assert out["sae_0"]["architecture"] == "topk" and out["sae_1"]["architecture"] == "relu"


def test_evaluate_a_glassllm_run_with_the_downstream_numbers(glass_run):
    spec, path = glass_run
    run = Run.open(path)
    assert run.data == spec
    assert type(run.model).__name__ == "GlassLM"
    got = run.evaluate(tokens=40)["glass"]
    assert got["n_tokens"] == 40
    for key in ("ce_clean", "ce_spliced", "ce_zero", "kl_div"):
        assert np.isfinite(got[key]) and got[key] >= 0, key
    assert np.isfinite(got["ce_loss_recovered"]) and got["ce_zero"] > got["ce_clean"]
    png = path / "feature_density.png"
    assert got["density_plot"] == str(png) and png.read_bytes().startswith(PNG)
    assert "density" not in got and not list(path.glob(".*.tmp"))
    png.unlink()
    quiet = run.evaluate(tokens=40, plot=False)["glass"]
    assert "density_plot" not in quiet and "density" not in quiet and not png.exists()
    assert quiet["ce_clean"] == pytest.approx(got["ce_clean"])


def test_evaluate_on_the_head_of_a_cache_says_it_is_training_data(glass_run, tmp_path):
    spec, path = glass_run
    harvest(spec, ["layers.1"], tmp_path / "cache", tokens=100, progress=False)
    head = DataSpec.cache(tmp_path / "cache", "layers.1")
    got = Run.open(path).evaluate(tokens=50, data=head)["glass"]
    assert got["held_out"] is False and got["n_tokens"] == 50
    assert "ce_clean" not in got and "density_plot" not in got


def test_evaluate_on_a_file_given(tmp_path):
    _synthetic_run(tmp_path / "run")
    np.save(tmp_path / "acts.npy", np.random.default_rng(0).normal(size=(30, 4)).astype("f4"))
    got = Run.open(tmp_path / "run").evaluate(tokens=100, data=DataSpec.file(tmp_path / "acts.npy"))
    assert got["run"]["n_tokens"] == 30 and "held_out" not in got["run"]


# ----- build_sae, steps_for_tokens ----------------------------------------------------------------


def test_build_sae_shapes_the_sae_for_the_stream():
    task = ArticleTask(ArticleTaskConfig(d_in=6), batch_size=8)
    sae = build_sae("topk", task)
    assert (sae.cfg.d_in, sae.cfg.d_out, sae.cfg.d_sae, sae.cfg.k) == (6, 6, 48, 3)
    assert sae.cfg.apply_b_dec_to_input
    assert build_sae("batchtopk", task, d_sae=10, k=4).cfg.k == 4
    relu = build_sae("relu", task, l1_coef=2.0)
    assert relu.cfg.d_sae == 48 and relu.cfg.l1_coef == 2.0 and not hasattr(relu.cfg, "k")
    wide = ArticleTask(ArticleTaskConfig(d_in=100, n_features=120), batch_size=8)
    assert build_sae("topk", wide).cfg.k == 32  # at most 32
    narrow = ArticleTask(ArticleTaskConfig(d_in=1, n_features=3), batch_size=8)
    assert build_sae("topk", narrow).cfg.k == 1  # at least 1


@pytest.mark.parametrize("d_out", [3, 5])
def test_build_sae_makes_a_transcoder_for_an_xy_stream(tmp_path, d_out):
    save_file({"x": torch.randn(20, 5), "y": torch.randn(20, d_out)}, tmp_path / "xy.safetensors")
    stream = ActivationFile(tmp_path / "xy.safetensors", batch_size=10)
    sae = build_sae("jumprelu", stream)
    assert (sae.cfg.d_in, sae.cfg.d_out, sae.cfg.d_sae) == (5, d_out, 40)
    assert not sae.cfg.apply_b_dec_to_input  # y is not x, even at the same width


def test_steps_for_tokens_rounds_up():
    stream = ArticleTask(ArticleTaskConfig(), batch_size=100)
    assert [steps_for_tokens(t, stream) for t in (1, 99, 100, 101, 1000)] == [1, 1, 1, 2, 10]
    with pytest.raises(ConfigError, match="--tokens must be at least 1, got 0"):
        steps_for_tokens(0, stream)


def test_a_run_that_recorded_a_relative_path_resumes(tmp_path, monkeypatch):
    """Runs made before DataSpec recorded a file as typed (`acts.npy`); resume still takes
    them, from the folder the path is relative to, and still refuses other data."""
    import json

    from safetensors import safe_open

    from saescope.atomic import atomic_save_tensors
    from saescope.training import CHECKPOINT_FILE

    monkeypatch.chdir(tmp_path)
    np.save("acts.npy", np.random.default_rng(0).normal(size=(512, 5)).astype(np.float32))
    np.save("other.npy", np.random.default_rng(1).normal(size=(512, 5)).astype(np.float32))
    spec = DataSpec.file("acts.npy")
    cfg = TrainConfig(steps=6, checkpoint_every=3, progress=False, init_samples=64)
    stream = spec.open(batch_size=64)
    with pytest.raises(InputError, match="ended after 4 batches"):  # killed after step 3's save
        train_run(build_sae("relu", stream), spec, [stream.batch(i) for i in range(4)], cfg, "run")
    with safe_open("run/" + CHECKPOINT_FILE, "pt") as fh:
        meta = json.loads(fh.metadata()["saescope_checkpoint"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    meta["run"]["data"]["path"] = "acts.npy"  # as the old CLI wrote it
    atomic_save_tensors(
        tmp_path / "run" / CHECKPOINT_FILE, tensors, {"saescope_checkpoint": json.dumps(meta)}
    )
    resumed = train_run(build_sae("relu", stream), spec, stream, cfg, "run", resume=True)
    assert resumed.final_metrics[0]["step"] == 6
    other = DataSpec.file("other.npy")
    with pytest.raises(ConfigError, match=r"data\.path is .*acts\.npy in the run, .*other\.npy"):
        train_run(build_sae("relu", stream), other, other.open(64), cfg, "run", resume=True)


def test_given_data_scores_every_sae_of_a_run(tmp_path):
    """The same first rows of a file for each SAE of a two-SAE run, not a used-up stream."""
    _synthetic_run(tmp_path / "sweep", archs=("topk", "relu"))
    rows = ArticleTask(ArticleTaskConfig(), batch_size=300).batch(0)[0].numpy()
    np.save(tmp_path / "acts.npy", rows)
    run = Run.open(tmp_path / "sweep")
    got = run.evaluate(tokens=300, data=DataSpec.file(tmp_path / "acts.npy"))
    assert set(got) == {"sae_0", "sae_1"}
    assert all(m["n_tokens"] == 300 for m in got.values())
    for name, sae in run.saes.items():
        assert got[name] == run.evaluate(300, DataSpec.file(tmp_path / "acts.npy"))[name]
        assert got[name]["architecture"] == sae.cfg.name


def test_sae_folders_come_in_number_order(tmp_path):
    sae = make_sae({"architecture": "topk", "d_in": 2, "d_sae": 4, "k": 1})
    for i in (10, 2, 1):
        sae.save(tmp_path / f"sae_{i}")
    assert [p.name for p in sae_folders(tmp_path)] == ["sae_1", "sae_2", "sae_10"]

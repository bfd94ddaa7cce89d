"""sparsify folders saved by sparsify itself (tests/fixtures/sparsify, `make fixtures`): loaded,
they encode, decode and forward as sparsify did on the recorded input; a run folder's hook
points are picked with hook=; what saescope cannot express is refused in one line; saescope's
TopK SAEs go to sparsify's format and back bitwise."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saescope.errors import FormatError
from saescope.interop.sparsify import (
    hook_points,
    is_sparsify,
    load_sparsify,
    metadata_sparsify,
    save_sparsify,
)
from saescope.saes import make_sae

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sparsify"
RTOL, ATOL = 1e-4, 1e-5


def _fixtures(expressible: bool) -> list[str]:
    names = []
    for info in sorted(FIXTURES.glob("**/fixture.json")):
        if json.loads(info.read_text())["expressible"] == expressible:
            names.append(info.parent.relative_to(FIXTURES).as_posix())
    return names


LOADABLE = _fixtures(True)
REFUSED = _fixtures(False)


def test_fixtures_present():
    assert {"topk", "transcoder", "skip", "run/layers.0", "run/layers.1"} <= set(LOADABLE)
    assert REFUSED == ["groupmax"]


@pytest.mark.parametrize("name", LOADABLE)
def test_outputs_match_sparsify(name):
    folder = FIXTURES / name
    want = load_file(folder / "expected.safetensors")
    sae = load_sparsify(folder)
    assert not sae.training and sae.cfg.name == "topk"
    with torch.no_grad():
        f = sae.encode(want["x"])
        torch.testing.assert_close(f, want["f"], rtol=RTOL, atol=ATOL)
        assert torch.equal(f != 0, want["f"] != 0)  # the same latents fire
        torch.testing.assert_close(sae.decode(want["f"]), want["x_hat"], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(sae(want["x"]), want["out"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", LOADABLE)
def test_flags_and_hook_come_through(name):
    folder = FIXTURES / name
    info = json.loads((folder / "fixture.json").read_text())
    cfg = json.loads((folder / "cfg.json").read_text())
    sae = load_sparsify(folder)
    assert sae.cfg.apply_b_dec_to_input is not info["flags"].get("transcode", False)
    assert sae.cfg.skip_connection is info["flags"].get("skip_connection", False)
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (cfg["d_in"], cfg["num_latents"], cfg["k"])
    meta = metadata_sparsify(folder)
    assert meta["sparsify_architecture"] == cfg["activation"]
    assert meta.get("hook_name") == info.get("hook")


def test_skip_connection_matters():
    """The skip fixture's W_skip is not zero, and forward differs from decode(encode(x)) by
    exactly x W_skip^T."""
    want = load_file(FIXTURES / "skip" / "expected.safetensors")
    sae = load_sparsify(FIXTURES / "skip")
    assert sae.W_skip.abs().sum() > 0
    with torch.no_grad():
        x = want["x"]
        skip = sae(x) - sae.decode(sae.encode(x))
        torch.testing.assert_close(skip, x @ sae.W_skip.T)
        assert (want["out"] - want["x_hat"]).abs().max() > 1e-3


@pytest.mark.parametrize("hook", ["layers.0", "layers.1"])
def test_run_folder_hook_selection(hook):
    run = FIXTURES / "run"
    assert is_sparsify(run) and hook_points(run) == ["layers.0", "layers.1"]
    want = load_file(run / hook / "expected.safetensors")
    sae = load_sparsify(run, hook=hook)
    with torch.no_grad():
        torch.testing.assert_close(sae(want["x"]), want["out"], rtol=RTOL, atol=ATOL)
    assert metadata_sparsify(run, hook=hook)["hook_name"] == hook


def test_run_folder_without_hook_lists_hook_points():
    with pytest.raises(FormatError) as e:
        load_sparsify(FIXTURES / "run")
    msg = str(e.value)
    assert "\n" not in msg and "layers.0, layers.1" in msg and "hook=" in msg


def test_unknown_hook_point_lists_hook_points():
    with pytest.raises(
        FormatError, match=r"no hook point 'layers\.7'; it has layers\.0, layers\.1"
    ):
        load_sparsify(FIXTURES / "run", hook="layers.7")


def test_single_hook_point_picked(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "run", run)
    shutil.rmtree(run / "layers.1")
    assert load_sparsify(run).cfg.d_in == 16
    assert metadata_sparsify(run)["hook_name"] == "layers.0"


def test_folder_of_coders_without_config(tmp_path):
    """A Hub download: one SparseCoder folder per hook point, no config.json."""
    run = tmp_path / "hub"
    shutil.copytree(FIXTURES / "run", run)
    (run / "config.json").unlink()
    assert is_sparsify(run) and hook_points(run) == ["layers.0", "layers.1"]
    assert load_sparsify(run, hook="layers.1").cfg.d_in == 16
    assert metadata_sparsify(run, hook="layers.1")["hook_name"] == "layers.1"


def test_bfloat16_coder_loads_as_float32(tmp_path):
    folder = _copy(tmp_path)
    w = load_file(folder / "sae.safetensors")
    save_file({k: v.bfloat16() for k, v in w.items()}, folder / "sae.safetensors")
    sae = load_sparsify(folder)
    assert sae.W_dec.dtype == torch.float32
    assert torch.equal(sae.W_dec, w["W_dec"].bfloat16().float())  # exactly the file's values


def test_hook_on_a_single_coder_names_its_hook_point():
    """A bare SparseCoder folder says no hook point: hook= names it (as for SAELens and
    dictionary_learning folders), so Run.open(--hook) and convert --hook can use it."""
    assert metadata_sparsify(FIXTURES / "topk").get("hook_name") is None
    assert metadata_sparsify(FIXTURES / "topk", hook="layers.3")["hook_name"] == "layers.3"
    assert load_sparsify(FIXTURES / "topk", hook="layers.3").cfg.d_in == 16


@pytest.mark.parametrize("name", REFUSED)
def test_inexpressible_refused_in_one_line(name):
    cfg = json.loads((FIXTURES / name / "cfg.json").read_text())
    with pytest.raises(FormatError) as e:
        load_sparsify(FIXTURES / name)
    assert "\n" not in str(e.value) and cfg["activation"] in str(e.value)


def _copy(tmp_path, name="topk"):
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


def _edit_cfg(folder, **changes):
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(changes)
    (folder / "cfg.json").write_text(json.dumps(cfg))


def test_shapes_disagreeing_with_cfg(tmp_path):
    folder = _copy(tmp_path)
    _edit_cfg(folder, num_latents=64)
    with pytest.raises(
        FormatError, match=r"'encoder\.weight' has shape \(32, 16\).*num_latents=64"
    ):
        load_sparsify(folder)


def test_expansion_factor_sizes_the_coder(tmp_path):
    folder = _copy(tmp_path)
    _edit_cfg(folder, num_latents=0, expansion_factor=2)  # 16 x 2 = 32, as saved
    assert load_sparsify(folder).cfg.d_sae == 32
    _edit_cfg(folder, expansion_factor=3)
    with pytest.raises(FormatError, match="num_latents=48"):
        load_sparsify(folder)


def test_skip_flag_without_its_tensor(tmp_path):
    folder = _copy(tmp_path)
    _edit_cfg(folder, skip_connection=True)
    with pytest.raises(FormatError, match="'W_skip' is missing"):
        load_sparsify(folder)
    folder = _copy(tmp_path, "skip")
    _edit_cfg(folder, skip_connection=False)
    with pytest.raises(FormatError, match=r"\['W_skip'\] have no place"):
        load_sparsify(folder)


def test_unknown_activation_named(tmp_path):
    folder = _copy(tmp_path)
    _edit_cfg(folder, activation="softmax")
    with pytest.raises(FormatError, match="unknown sparsify activation 'softmax'; saescope reads"):
        load_sparsify(folder)


def test_k_beyond_the_latents(tmp_path):
    folder = _copy(tmp_path)
    _edit_cfg(folder, k=33)
    with pytest.raises(FormatError, match="k must be between 1 and d_sae=32"):
        load_sparsify(folder)


def test_corrupt_weights_and_bad_json(tmp_path):
    folder = _copy(tmp_path)
    (folder / "sae.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(FormatError, match="truncated or corrupt"):
        load_sparsify(folder)
    (folder / "cfg.json").write_text("{nope")
    with pytest.raises(FormatError, match="not valid JSON"):
        load_sparsify(folder)


def test_not_a_sparsify_folder(tmp_path):
    assert not is_sparsify(tmp_path)
    assert is_sparsify(FIXTURES / "topk")
    with pytest.raises(FormatError, match="holds no sparsify SAE"):
        load_sparsify(tmp_path)


def _random_topk(dtype=torch.float32, **kw):
    sae = make_sae({"architecture": "topk", "d_in": 8, "d_sae": 24, "k": 3, **kw}).to(dtype)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
    return sae.eval()


ROUND_TRIPS = {
    "plain": {},
    "transcoder": {"apply_b_dec_to_input": False},
    "skip": {"skip_connection": True},
    "skip_transcoder": {"skip_connection": True, "apply_b_dec_to_input": False},
    "aux_settings": {"k_aux": 5, "aux_coef": 0.25},
}


@pytest.mark.parametrize("name", ROUND_TRIPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip_is_bitwise(tmp_path, name, dtype):
    sae = _random_topk(dtype, **ROUND_TRIPS[name])
    save_sparsify(sae, tmp_path / "sc", metadata={"hook_name": "layers.3", "model_name": "m"})
    assert is_sparsify(tmp_path / "sc")
    back = load_sparsify(tmp_path / "sc")
    assert back.cfg == sae.cfg
    for key, value in sae.state_dict().items():
        assert back.state_dict()[key].dtype == dtype
        assert torch.equal(back.state_dict()[key], value), key
    x = torch.randn(32, 8, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(back.encode(x), sae.encode(x)) and torch.equal(back(x), sae(x))
    meta = metadata_sparsify(tmp_path / "sc")
    assert meta == {"hook_name": "layers.3", "model_name": "m", "sparsify_architecture": "topk"}


def test_written_cfg_is_sparsifys(tmp_path):
    save_sparsify(_random_topk(skip_connection=True), tmp_path / "sc")
    cfg = json.loads((tmp_path / "sc" / "cfg.json").read_text())
    assert cfg == {
        "activation": "topk",
        "expansion_factor": 3,
        "normalize_decoder": True,
        "num_latents": 24,
        "k": 3,
        "multi_topk": False,
        "skip_connection": True,
        "transcode": False,
        "d_in": 8,
    }
    w = load_file(tmp_path / "sc" / "sae.safetensors")
    shapes = {k: tuple(v.shape) for k, v in w.items()}
    assert shapes == {
        "encoder.weight": (24, 8),
        "encoder.bias": (24,),
        "W_dec": (24, 8),
        "b_dec": (8,),
        "W_skip": (8, 8),
    }


def test_edited_cfg_wins_over_the_kept_config(tmp_path):
    """The config kept in the header only adds k_aux/aux_coef while cfg.json agrees with it."""
    save_sparsify(_random_topk(aux_coef=0.25), tmp_path / "sc")
    _edit_cfg(tmp_path / "sc", k=4)
    sae = load_sparsify(tmp_path / "sc")
    assert sae.cfg.k == 4 and sae.cfg.aux_coef == 1 / 32


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "gated", "batchtopk", "matryoshka"])
def test_inexpressible_architectures_refused(tmp_path, arch):
    kw = {"k": 3} if arch in ("batchtopk", "matryoshka") else {}
    sae = make_sae({"architecture": arch, "d_in": 8, "d_sae": 24, **kw})
    with pytest.raises(FormatError) as e:
        save_sparsify(sae, tmp_path / "sc")
    assert "\n" not in str(e.value) and f"a {arch} SAE" in str(e.value)
    assert not (tmp_path / "sc").exists()


def test_transcoder_of_another_width_refused(tmp_path):
    sae = make_sae(
        {"architecture": "topk", "d_in": 8, "d_out": 6, "d_sae": 24, "k": 3}
        | {"apply_b_dec_to_input": False}
    )
    with pytest.raises(FormatError, match="d_out=6 != d_in=8"):
        save_sparsify(sae, tmp_path / "sc")


def test_missing_weights_in_a_written_folder(tmp_path):
    save_sparsify(_random_topk(), tmp_path / "sc")
    w = load_file(tmp_path / "sc" / "sae.safetensors")
    del w["b_dec"]
    save_file(w, tmp_path / "sc" / "sae.safetensors")
    with pytest.raises(FormatError, match="'b_dec' is missing"):
        load_sparsify(tmp_path / "sc")


def test_a_transcoders_hook_point_is_its_modules_input_and_output(tmp_path):
    """sparsify's transcoder at hook point M reads M's input and predicts M's output: its
    metadata says M:in -> M (saescope's hook syntax), so a run of it evaluates and splices
    a transcoder, not an SAE on M's output."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "transcoder", run / "layers.1.mlp")
    (run / "config.json").write_text(json.dumps({"hookpoints": ["layers.1.mlp"]}))
    meta = metadata_sparsify(run)
    assert (meta["hook_name"], meta["hook_name_out"]) == ("layers.1.mlp:in", "layers.1.mlp")
    plain = metadata_sparsify(tmp_path / "run" / "layers.1.mlp", hook=None)
    assert plain["hook_name"] == "layers.1.mlp:in"
    assert "hook_name_out" not in metadata_sparsify(FIXTURES / "run", hook="layers.1")

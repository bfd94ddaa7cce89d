"""The file format (`saes/io.py`) and the load/save API on top of it: atomic writes, every bad
file a one-line FormatError naming the file, round trips, and unknown config keys."""

import json

import pytest
import torch
from safetensors.torch import save_file

import saescope
from saescope.errors import ConfigError, FormatError
from saescope.saes import SAE, TopKSAE, config_from_dict, io, make_sae
from saescope.version import __version__
from tests.conftest import small_config

CONFIG = {"architecture": "relu", "d_in": 3, "d_sae": 4}


def _tensors(dtype=torch.float32):
    return {"W_enc": torch.randn(3, 4, dtype=dtype), "b_dec": torch.zeros(3, dtype=dtype)}


def _one_line(excinfo, *parts) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert str(part) in msg, (part, msg)
    return msg


# ----- io: write, read_cfg, read_weights, config_part, is_saved ----------------------------------


def test_write_makes_a_complete_folder_and_no_temp_files(tmp_path):
    path = tmp_path / "a" / "sae"
    assert not io.is_saved(path)
    tensors = _tensors(torch.float64)
    assert io.write(path, CONFIG, tensors, {"note": [1, 2]}) == path
    assert io.is_saved(path) and io.is_saved(str(path))
    assert sorted(p.name for p in path.iterdir()) == [io.CFG_FILE, io.WEIGHTS_FILE]
    cfg = io.read_cfg(path)
    assert cfg["format_version"] == io.FORMAT_VERSION and cfg["saescope_version"] == __version__
    assert cfg["dtype"] == "float64" and cfg["normalize_activations"] == "none"
    assert cfg["metadata"] == {"note": [1, 2]}
    assert io.config_part(cfg) == CONFIG
    got = io.read_weights(path)
    assert got.keys() == tensors.keys() and all(torch.equal(got[k], tensors[k]) for k in got)
    io.write(path, {**CONFIG, "d_sae": 5}, _tensors(), {})  # over a save: replaced whole
    assert io.read_cfg(path)["d_sae"] == 5 and io.read_cfg(path)["dtype"] == "float32"
    assert sorted(p.name for p in path.iterdir()) == [io.CFG_FILE, io.WEIGHTS_FILE]


def test_is_saved_wants_a_folder_with_cfg_json(tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / io.WEIGHTS_FILE).write_bytes(b"")
    assert not io.is_saved(tmp_path / "f") and not io.is_saved(tmp_path / "d")
    assert not io.is_saved(tmp_path / "missing")


def test_weights_are_written_before_cfg_json(tmp_path, monkeypatch):
    """A write killed between the two files leaves no cfg.json, so no half-saved SAE."""

    def killed(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "atomic_write_bytes", killed)
    with pytest.raises(KeyboardInterrupt):
        io.write(tmp_path / "s", CONFIG, _tensors(), {})
    assert (tmp_path / "s" / io.WEIGHTS_FILE).is_file() and not io.is_saved(tmp_path / "s")


def test_config_part_drops_only_the_file_keys():
    cfg = {
        "format_version": 1,
        "saescope_version": "x",
        "dtype": "float32",
        "normalize_activations": "none",
        "metadata": {"a": 1},
        **small_config("topk"),
    }
    assert io.config_part(cfg) == small_config("topk")


def test_missing_cfg_json_is_named(tmp_path):
    with pytest.raises(FormatError) as e:
        io.read_cfg(tmp_path)
    _one_line(e, tmp_path / io.CFG_FILE, "not found")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe\x00garbage", "is not valid JSON"),
        (b"[1, 2]", "must hold a JSON object"),
        (b'{"format_version": 1, "architecture": "relu", "d_in": 3}', "lacks keys ['d_sae']"),
        (b'{"format_version": 2, "architecture": "relu", "d_in": 3, "d_sae": 4}', "upgrade"),
        (b'{"format_version": "1", "architecture": "relu", "d_in": 3, "d_sae": 4}', "'1'"),
    ],
)
def test_a_bad_cfg_json_is_one_line_naming_the_file(tmp_path, content, says):
    io.write(tmp_path, CONFIG, _tensors(), {})
    (tmp_path / io.CFG_FILE).write_bytes(content)
    with pytest.raises(FormatError) as e:
        io.read_cfg(tmp_path)
    _one_line(e, tmp_path / io.CFG_FILE, says)
    with pytest.raises(FormatError) as e:
        saescope.load(tmp_path)
    _one_line(e, tmp_path / io.CFG_FILE, says)


@pytest.mark.parametrize("cut", ["missing", "empty", "header", "half"])
def test_missing_or_truncated_weights_are_one_line_naming_the_file(tmp_path, cut):
    sae = make_sae(small_config("relu"))
    sae.save(tmp_path)
    w = tmp_path / io.WEIGHTS_FILE
    data = w.read_bytes()
    if cut == "missing":
        w.unlink()
    else:
        w.write_bytes({"empty": b"", "header": data[:20], "half": data[: len(data) // 2]}[cut])
    says = "not found" if cut == "missing" else "truncated or corrupt"
    with pytest.raises(FormatError) as e:
        io.read_weights(tmp_path)
    _one_line(e, w, says)
    with pytest.raises(FormatError) as e:
        SAE.load(tmp_path)
    _one_line(e, w, says)


# ----- SAE.save / SAE.load / saescope.save / saescope.load ---------------------------------------


def _perturbed(arch: str) -> SAE:
    """An SAE whose every tensor differs from a fresh one's (BatchTopK's threshold set, so
    it encodes as a JumpReLU in eval mode)."""
    sae = make_sae(small_config(arch))
    with torch.no_grad():
        for t in sae.parameters():
            t.add_(torch.rand_like(t) * 0.1 + 0.05)
        for t in sae.buffers():
            t.copy_(torch.rand_like(t) * 0.1 + 0.05)
    return sae


def test_save_load_round_trip(arch, tmp_path):
    sae = _perturbed(arch).train()
    assert saescope.save(sae, tmp_path / "a", {"run": "one"}) == tmp_path / "a"
    assert sae.save(tmp_path / "b") == tmp_path / "b"
    x = torch.randn(20, 6)
    sae.eval()
    for loaded in (
        saescope.load(tmp_path / "a"),
        SAE.load(tmp_path / "b"),
        SAE.load(str(tmp_path / "a")),
    ):
        assert type(loaded) is type(sae) and loaded.cfg == sae.cfg
        assert not loaded.training  # loaded in eval mode
        want = sae.state_dict()
        got = loaded.state_dict()
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=0)
        torch.testing.assert_close(loaded(x), sae(x), rtol=1e-5, atol=1e-6)
    assert io.read_cfg(tmp_path / "a")["metadata"] == {"run": "one"}
    assert io.read_cfg(tmp_path / "b")["metadata"] == {}
    assert io.read_cfg(tmp_path / "a")["architecture"] == arch


def test_a_transcoder_round_trips(tmp_path):
    cfg = small_config("topk", d_out=5, apply_b_dec_to_input=False)
    sae = make_sae(cfg)
    sae.save(tmp_path)
    loaded = saescope.load(tmp_path)
    assert loaded.cfg.d_out == 5 and not loaded.cfg.apply_b_dec_to_input
    assert loaded.W_dec.shape == (16, 5)


def test_the_file_uses_saelens_names_and_shapes(tmp_path):
    make_sae(small_config("jumprelu")).save(tmp_path)
    shapes = {k: tuple(v.shape) for k, v in io.read_weights(tmp_path).items()}
    assert shapes == {
        "W_enc": (6, 16),
        "b_enc": (16,),
        "W_dec": (16, 6),
        "b_dec": (6,),
        "threshold": (16,),
        "log_threshold": (16,),  # saescope's exact value (exp does not invert bit for bit)
    }


def test_a_jumprelu_save_and_load_is_bitwise(tmp_path):
    sae = make_sae(small_config("jumprelu"))
    with torch.no_grad():
        sae.log_threshold.copy_(torch.randn(16) * 3)  # many values whose exp-log moves an ulp
    sae.save(tmp_path)
    back = SAE.load(tmp_path)
    assert torch.equal(back.log_threshold, sae.log_threshold)
    # an older file (threshold only) still loads, within an ulp
    tensors = io.read_weights(tmp_path)
    del tensors["log_threshold"]
    save_file(tensors, tmp_path / io.WEIGHTS_FILE)
    old = SAE.load(tmp_path)
    torch.testing.assert_close(old.log_threshold, sae.log_threshold, rtol=1e-6, atol=1e-6)


def test_a_float64_save_loads_as_float64_bit_for_bit(arch, tmp_path):
    """As the peer formats' loaders keep float64: a float64 SAELens folder converted to
    saescope's format, or a float64 SAE saved, comes back without rounding to float32."""
    sae = _perturbed(arch).double().eval()
    with torch.no_grad():
        sae.W_dec.add_(1e-12)  # not representable in float32
    back = SAE.load(sae.save(tmp_path / "a"))
    assert back.W_dec.dtype == torch.float64
    assert all(torch.equal(v, sae.state_dict()[k]) for k, v in back.state_dict().items())


def test_a_jumprelu_file_missing_its_threshold_is_one_line_or_exact(tmp_path):
    """Without `threshold` the exact log_threshold serves; without either, a one-line error
    (it was a KeyError)."""
    sae = make_sae(small_config("jumprelu"))
    tensors = io.read_weights(sae.save(tmp_path))
    del tensors["threshold"]
    save_file(tensors, tmp_path / io.WEIGHTS_FILE)
    assert torch.equal(SAE.load(tmp_path).log_threshold, sae.log_threshold)
    del tensors["log_threshold"]
    save_file(tensors, tmp_path / io.WEIGHTS_FILE)
    with pytest.raises(FormatError, match="threshold' is missing") as e:
        SAE.load(tmp_path)
    assert "\n" not in str(e.value)


def test_a_class_loads_only_its_own_architecture(tmp_path):
    make_sae(small_config("relu")).save(tmp_path / "relu")
    make_sae(small_config("topk")).save(tmp_path / "topk")
    with pytest.raises(FormatError) as e:
        TopKSAE.load(tmp_path / "relu")
    _one_line(e, tmp_path / "relu", "holds a relu SAE, not topk; use SAE.load")
    assert isinstance(TopKSAE.load(tmp_path / "topk"), TopKSAE)


def test_an_unknown_key_in_cfg_json_is_named(tmp_path):
    make_sae(small_config("relu")).save(tmp_path)
    cfg = json.loads((tmp_path / io.CFG_FILE).read_text())
    cfg["l1_coeff"] = 3.0
    (tmp_path / io.CFG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(FormatError) as e:
        SAE.load(tmp_path)
    _one_line(e, tmp_path / io.CFG_FILE, "unknown key 'l1_coeff'", "did you mean 'l1_coef'?")


def test_an_unknown_architecture_in_cfg_json_is_named(tmp_path):
    make_sae(small_config("relu")).save(tmp_path)
    cfg = json.loads((tmp_path / io.CFG_FILE).read_text())
    (tmp_path / io.CFG_FILE).write_text(json.dumps({**cfg, "architecture": "reluu"}))
    with pytest.raises(FormatError) as e:
        SAE.load(tmp_path)
    _one_line(e, tmp_path / io.CFG_FILE, "unknown architecture 'reluu'")


def test_weights_of_the_wrong_shape_are_refused(tmp_path):
    make_sae(small_config("relu", d_sae=8)).save(tmp_path / "small")
    make_sae(small_config("relu", d_sae=16)).save(tmp_path / "big")
    (tmp_path / "big" / io.WEIGHTS_FILE).write_bytes(
        (tmp_path / "small" / io.WEIGHTS_FILE).read_bytes()
    )
    with pytest.raises(FormatError) as e:
        SAE.load(tmp_path / "big")
    _one_line(e, tmp_path / "big" / io.CFG_FILE, "d_sae is 16", "W_dec of shape (8, 6)", "d_sae=8")


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        ({"d_in": 20}, "d_in is 20 but"),
        ({"d_in": 20, "d_out": 20}, "d_in is 20 but"),
        ({"d_out": 9}, "d_out is 9 but"),
    ],
)
def test_a_cfg_json_size_that_the_weights_contradict_is_named(tmp_path, edit, says):
    make_sae(small_config("topk", d_in=300, d_sae=1200)).save(tmp_path)
    cfg = json.loads((tmp_path / io.CFG_FILE).read_text())
    (tmp_path / io.CFG_FILE).write_text(json.dumps({**cfg, **edit}))
    with pytest.raises(FormatError) as e:
        SAE.load(tmp_path)
    msg = _one_line(e, tmp_path / io.CFG_FILE, says, "set", "in cfg.json or re-save the SAE")
    assert len(msg) < 250 and "transcoder" not in msg


def test_a_tensor_of_another_shape_is_named_alone(tmp_path):
    sae = make_sae(small_config("gated"))
    tensors = {**sae.to_file_tensors(), "b_mag": torch.zeros(3)}
    io.write(tmp_path, sae.cfg.to_dict(), tensors, {})
    with pytest.raises(FormatError) as e:
        SAE.load(tmp_path)
    _one_line(e, io.WEIGHTS_FILE, "tensor 'b_mag' has shape (3,), expected (16,)")


# ----- make_sae / config_from_dict ----------------------------------------------------------------


def test_an_unknown_config_key_is_named_with_the_close_match(arch):
    bad = {**small_config(arch), "d_sea": 32}
    for build in (config_from_dict, make_sae):
        with pytest.raises(ConfigError) as e:
            build(bad)
        _one_line(e, "unknown key 'd_sea'", "did you mean 'd_sae'?", f"a {arch} SAE")


def test_an_unknown_key_without_a_close_match_lists_the_known_ones():
    with pytest.raises(ConfigError) as e:
        config_from_dict({**small_config("topk"), "zzzzzz": 1})
    msg = _one_line(e, "unknown key 'zzzzzz'", "known: d_in, d_sae")
    assert "did you mean" not in msg


def test_a_missing_config_key_is_named(arch):
    for build in (config_from_dict, make_sae):
        with pytest.raises(ConfigError) as e:
            build({"architecture": arch, "d_sae": 16})
        _one_line(e, f"a {arch} SAE needs 'd_in'", "give d_in", "required: d_in, d_sae")


def test_config_from_dict_builds_the_architectures_config(arch):
    cfg = config_from_dict(small_config(arch))
    assert cfg.name == arch and cfg.d_in == 6 and cfg.d_sae == 16 and cfg.d_out == 6
    assert config_from_dict(cfg.to_dict()) == cfg
    assert type(make_sae(cfg.to_dict())).config_cls is type(cfg)
    with pytest.raises(ConfigError, match="unknown architecture 'None'"):
        config_from_dict({"d_in": 6, "d_sae": 16})

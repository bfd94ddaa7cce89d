"""dictionary_learning folders saved by dictionary_learning itself
(tests/fixtures/dictionary_learning, `make fixtures`): loaded, they encode and decode as the
library did on the recorded input; saescope's own SAEs written in the format come back bitwise;
bad files are one-line errors."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saescope.errors import FormatError
from saescope.interop.dictionary_learning import (
    is_dictionary_learning,
    load_dictionary_learning,
    metadata_dictionary_learning,
    save_dictionary_learning,
)
from saescope.interop.dictionary_learning_tensors import CLASSES
from saescope.saes import make_sae

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "dictionary_learning"
NAMES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
RTOL, ATOL = 1e-4, 1e-5


def test_fixtures_present():
    assert set(NAMES) == set(CLASSES) - {"AutoEncoderNew"}


@pytest.mark.parametrize("name", NAMES)
def test_outputs_match_dictionary_learning(name):
    """encode, decode and forward as the library gave them from the state dict as saved."""
    folder = FIXTURES / name
    want = load_file(folder / "expected.safetensors")
    sae = load_dictionary_learning(folder)
    assert not sae.training
    with torch.no_grad():
        f = sae.encode(want["x"])
        torch.testing.assert_close(f, want["f"], rtol=RTOL, atol=ATOL)
        assert torch.equal(f != 0, want["f"] != 0)  # the same latents fire
        torch.testing.assert_close(sae.decode(want["f"]), want["x_hat"], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(sae(want["x"]), want["out"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_architecture_and_hook_come_through(name):
    folder = FIXTURES / name
    trainer = json.loads((folder / "config.json").read_text())["trainer"]
    info = json.loads((folder / "fixture.json").read_text())
    meta = metadata_dictionary_learning(folder)
    assert meta["dictionary_learning_architecture"] == info["dict_class"] == name
    assert meta["model_name"] == trainer["lm_name"]
    assert meta["hook_name"] == trainer["submodule_name"]
    assert meta["layer"] == trainer["layer"]
    sae = load_dictionary_learning(folder)
    assert sae.cfg.name == CLASSES[name]
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (trainer["activation_dim"], trainer["dict_size"])
    if "k" in trainer:
        assert sae.cfg.k == trainer["k"]


def test_class_specific_settings():
    """JumpReLU never pre-centres; Matryoshka keeps its groups; an unset BatchTopK threshold
    (-1) encodes as plain ReLU, as dictionary_learning's encode(use_threshold=True)."""
    assert not load_dictionary_learning(FIXTURES / "JumpReluAutoEncoder").cfg.apply_b_dec_to_input
    trainer = json.loads((FIXTURES / "MatryoshkaBatchTopKSAE/config.json").read_text())["trainer"]
    sae = load_dictionary_learning(FIXTURES / "MatryoshkaBatchTopKSAE")
    assert list(sae.cfg.group_sizes) == trainer["group_sizes"]


def test_unset_batchtopk_threshold_is_relu(tmp_path):
    folder = _copy(tmp_path, "BatchTopKSAE")
    state = torch.load(folder / "ae.pt", weights_only=True)
    state["threshold"] = torch.tensor(-1.0)
    torch.save(state, folder / "ae.pt")
    sae = load_dictionary_learning(folder)
    x = load_file(folder / "expected.safetensors")["x"]
    with torch.no_grad():
        pre = (x - state["b_dec"]) @ state["encoder.weight"].T + state["encoder.bias"]
        torch.testing.assert_close(sae.encode(x), pre.relu(), rtol=RTOL, atol=ATOL)


# ----- saescope -> dictionary_learning -> saescope ------------------------------------------

VARIANTS = {
    "relu": {"architecture": "relu"},
    "relu_weighted": {"architecture": "relu", "l1_mode": "weighted"},
    "relu_uncentred": {"architecture": "relu", "apply_b_dec_to_input": False},
    "topk": {"architecture": "topk", "k": 4},
    "topk_uncentred": {"architecture": "topk", "k": 4, "apply_b_dec_to_input": False},
    "batchtopk": {"architecture": "batchtopk", "k": 4},
    "matryoshka": {"architecture": "matryoshka", "k": 4, "group_sizes": (4, 12, 16)},
    "jumprelu": {"architecture": "jumprelu"},
    "jumprelu_uncentred": {"architecture": "jumprelu", "apply_b_dec_to_input": False},
    "gated": {"architecture": "gated"},
    "gated_uncentred": {"architecture": "gated", "apply_b_dec_to_input": False},
}
EXPECTED_CLASS = {
    "relu": "AutoEncoder",
    "relu_weighted": "AutoEncoderNew",
    "relu_uncentred": "AutoEncoderNew",
}


def _random_sae(spec, seed=0, dtype=torch.float32):
    """A small SAE with every parameter random and non-trivial (thresholds set)."""
    sae = make_sae({"d_in": 16, "d_sae": 32, **spec}).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * (0.3 if p.dim() == 1 else 1))
        if sae.cfg.unit_norm_decoder:
            sae.normalise_decoder()
        if hasattr(sae, "log_threshold"):
            sae.log_threshold.add_(math.log(0.4))
        elif hasattr(sae, "threshold"):
            sae.threshold.fill_(0.3)
    return sae.eval()


def _x(seed=1, dtype=torch.float32):
    return torch.randn(8, 16, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip_bitwise(tmp_path, variant):
    sae = _random_sae(VARIANTS[variant])
    meta = {"model_name": "glassllm", "hook_name": "blocks.1", "layer": 1, "context_size": 64}
    folder = save_dictionary_learning(sae, tmp_path / variant, meta)
    assert is_dictionary_learning(folder)
    trainer = json.loads((folder / "config.json").read_text())["trainer"]
    want = EXPECTED_CLASS.get(variant, next(c for c, a in CLASSES.items() if a == sae.cfg.name))
    assert trainer["dict_class"] == want
    back = load_dictionary_learning(folder)
    assert back.cfg == sae.cfg
    mine, theirs = sae.state_dict(), back.state_dict()
    assert mine.keys() == theirs.keys()
    for k in mine:
        assert mine[k].dtype == theirs[k].dtype and torch.equal(mine[k], theirs[k]), k
    with torch.no_grad():
        assert torch.equal(back(_x()), sae(_x()))
    got = metadata_dictionary_learning(folder)
    assert {k: got[k] for k in meta} == meta


def test_round_trip_float64(tmp_path):
    sae = _random_sae(VARIANTS["jumprelu"], dtype=torch.float64)
    back = load_dictionary_learning(save_dictionary_learning(sae, tmp_path / "f64"))
    assert back.W_enc.dtype == torch.float64
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in sae.state_dict().items())


@pytest.mark.parametrize("variant", VARIANTS)
def test_file_alone_gives_saescope_numbers(tmp_path, variant):
    """Without saescope's record in config.json the file is read as dictionary_learning reads
    it: the folds made for the class give the same encode/decode within the tolerance."""
    sae = _random_sae(VARIANTS[variant])
    folder = save_dictionary_learning(sae, tmp_path / variant)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["saescope"]
    (folder / "config.json").write_text(json.dumps(cfg))
    peer = load_dictionary_learning(folder)
    x = _x()
    with torch.no_grad():
        f = sae.encode(x)
        torch.testing.assert_close(peer.encode(x), f, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(peer.decode(f), sae.decode(f), rtol=RTOL, atol=ATOL)


def test_changed_file_wins_over_the_record(tmp_path):
    """An ae.pt changed after saescope wrote it is read as it is, not from the record."""
    sae = _random_sae(VARIANTS["jumprelu"])
    folder = save_dictionary_learning(sae, tmp_path / "j")
    state = torch.load(folder / "ae.pt", weights_only=True)
    state["b_dec"] += 1.0
    torch.save(state, folder / "ae.pt")
    back = load_dictionary_learning(folder)
    assert not back.cfg.apply_b_dec_to_input  # the class's own reading
    assert torch.equal(back.b_dec, state["b_dec"])


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"architecture": "relu", "d_out": 12, "apply_b_dec_to_input": False}, "transcoder"),
        ({"architecture": "batchtopk", "k": 2.5}, "whole k"),
        ({"architecture": "topk", "k": 4, "skip_connection": True}, "skip connection"),
    ],
)
def test_inexpressible_refused(tmp_path, spec, match):
    sae = _random_sae(spec)
    with pytest.raises(FormatError, match=match) as e:
        save_dictionary_learning(sae, tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_unset_threshold_refused(tmp_path, arch):
    sae = make_sae({"architecture": arch, "d_in": 16, "d_sae": 32, "k": 4})
    with pytest.raises(FormatError, match="no inference threshold"):
        save_dictionary_learning(sae, tmp_path / "out")
    sae.threshold[3] = 0.5
    sae.threshold[:3] = 0.2
    sae.threshold[4:] = 0.2
    with pytest.raises(FormatError, match="per-latent thresholds"):
        save_dictionary_learning(sae, tmp_path / "out")


# ----- bad input --------------------------------------------------------------------------


def _copy(tmp_path, name="AutoEncoder"):
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


def _edit_trainer(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["trainer"].update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


class Payload:
    """Anything torch.load(weights_only=True) refuses to unpickle."""


def _one_line_error(folder, match, hook=None):
    with pytest.raises(FormatError, match=match) as e:
        load_dictionary_learning(folder, hook=hook)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_pickled_object_refused(tmp_path):
    folder = _copy(tmp_path)
    torch.save({"encoder.weight": Payload()}, folder / "ae.pt")
    msg = _one_line_error(folder, "needs unpickling")
    assert "Payload" in msg


def test_not_a_dict_of_tensors(tmp_path):
    folder = _copy(tmp_path)
    torch.save(torch.zeros(3), folder / "ae.pt")
    _one_line_error(folder, "not a state dict")
    torch.save({"encoder.weight": [1.0, 2.0]}, folder / "ae.pt")
    _one_line_error(folder, "'encoder.weight' is a list, not a tensor")


def test_corrupt_file(tmp_path):
    folder = _copy(tmp_path)
    (folder / "ae.pt").write_bytes(b"not a torch file")
    _one_line_error(folder, "not a readable torch state dict")


def test_missing_and_unknown_keys(tmp_path):
    folder = _copy(tmp_path)
    state = torch.load(folder / "ae.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "bias"}, folder / "ae.pt")
    _one_line_error(folder, r"needs tensors \['bias'\]")
    torch.save({**state, "W_skip": torch.zeros(16, 16)}, folder / "ae.pt")
    _one_line_error(folder, r"\['W_skip'\] have no place in a AutoEncoder")


def test_shapes_disagreeing_with_config(tmp_path):
    folder = _copy(tmp_path, "AutoEncoderTopK")
    _edit_trainer(folder, dict_size=64)
    _one_line_error(folder, r"'decoder.weight' has shape \(16, 32\) but .*dict_size=64")


def test_k_disagreeing_with_config(tmp_path):
    folder = _copy(tmp_path, "BatchTopKSAE")
    _edit_trainer(folder, k=7)
    _one_line_error(folder, "k=4 but config.json's trainer.k=7")


def test_unknown_dict_class_named(tmp_path):
    folder = _copy(tmp_path)
    _edit_trainer(folder, dict_class="CrossCoder")
    msg = _one_line_error(folder, "unknown dict_class 'CrossCoder'")
    assert all(name in msg for name in CLASSES)


def test_config_without_trainer(tmp_path):
    folder = _copy(tmp_path)
    (folder / "config.json").write_text('{"buffer": {}}')
    _one_line_error(folder, "lacks trainer.dict_class")


def test_not_a_dictionary_learning_folder(tmp_path):
    assert not is_dictionary_learning(tmp_path)
    _one_line_error(tmp_path, "holds no ae.pt")


def test_run_folder_picks_by_hook(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "AutoEncoder", run / "trainer_0")
    shutil.copytree(FIXTURES / "AutoEncoderTopK", run / "trainer_1")
    _edit_trainer(run / "trainer_1", submodule_name="resid_post_layer_2")
    assert is_dictionary_learning(run)
    msg = _one_line_error(run, "several dictionaries")
    assert "trainer_0" in msg and "trainer_1" in msg
    assert load_dictionary_learning(run, hook="trainer_1").cfg.name == "topk"
    assert load_dictionary_learning(run, hook="resid_post_layer_2").cfg.name == "topk"
    assert metadata_dictionary_learning(run, hook="trainer_0")["hook_name"] == "resid_post_layer_1"
    assert load_dictionary_learning(run / "trainer_1" / "ae.pt").cfg.name == "topk"
    _one_line_error(run, "0 matching hook='nowhere'", hook="nowhere")

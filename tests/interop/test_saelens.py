"""SAELens folders saved by SAELens itself (tests/fixtures/saelens, `make fixtures`): loaded,
they encode and decode as SAELens did on the recorded input; what saescope cannot express is
refused in one line; bad files are one-line errors."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saescope.errors import FormatError
from saescope.interop import is_saelens, load_saelens, saelens_metadata

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "saelens"
RTOL, ATOL = 1e-4, 1e-5


def _fixtures(expressible: bool) -> list[str]:
    names = []
    for folder in sorted(FIXTURES.iterdir()):
        info = json.loads((folder / "fixture.json").read_text())
        if info["expressible"] == expressible:
            names.append(folder.name)
    return names


LOADABLE = _fixtures(True)
REFUSED = _fixtures(False)


def test_fixtures_present():
    assert {"standard", "topk", "jumprelu", "gated", "batchtopk", "transcoder"} <= set(LOADABLE)
    assert {"ckpt_batchtopk", "ckpt_topk", "ckpt_matryoshka_batchtopk"} <= set(LOADABLE)
    assert REFUSED


@pytest.mark.parametrize("name", LOADABLE)
def test_outputs_match_saelens(name):
    """encode, decode and forward as SAELens's own loader gave them. A BatchTopK training
    checkpoint encodes by batch top-k in SAELens, as saescope's BatchTopK (and Matryoshka) does
    in train mode."""
    folder = FIXTURES / name
    want = _flat_heads(folder, load_file(folder / "expected.safetensors"))
    sae = load_saelens(folder)
    sae.train(sae.cfg.name in ("batchtopk", "matryoshka"))
    with torch.no_grad():
        f = sae.encode(want["x"])
        torch.testing.assert_close(f, want["f"], rtol=RTOL, atol=ATOL)
        assert torch.equal(f != 0, want["f"] != 0)  # the same latents fire
        torch.testing.assert_close(sae.decode(want["f"]), want["x_hat"], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(sae(want["x"]), want["out"], rtol=RTOL, atol=ATOL)


def _flat_heads(folder: Path, want: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A hook_z SAE's inputs and outputs (..., n_heads, d_head) as saescope takes and gives
    them: flattened to (..., n_heads * d_head)."""
    cfg = json.loads((folder / "cfg.json").read_text())
    if cfg.get("reshape_activations") != "hook_z":
        return want
    return {k: v if k == "f" else v.flatten(-2) for k, v in want.items()}


def test_hook_z_loads_on_flattened_heads():
    folder = FIXTURES / "standard_hook_z"
    assert load_file(folder / "expected.safetensors")["x"].dim() == 3  # (8, 4 heads, 4)
    assert saelens_metadata(folder)["reshape_activations"] == "hook_z"
    assert load_saelens(folder).cfg.d_in == 16


def test_fractional_batch_top_k_keeps_what_saelens_keeps():
    """k * N = 2.7 * 8 = 21.6: SAELens keeps int(21.6) = 21 codes of the batch, and so does
    saescope (ops.batch_topk_count)."""
    want = load_file(FIXTURES / "ckpt_batchtopk_fractional" / "expected.safetensors")
    assert int((want["f"] != 0).sum()) == 21
    sae = load_saelens(FIXTURES / "ckpt_batchtopk_fractional").train()
    with torch.no_grad():
        assert int((sae.encode(want["x"]) != 0).sum()) == 21


CHECKPOINTS = [n for n in LOADABLE if n.startswith("ckpt_")]


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_checkpoint_inference_matches_saelens(name):
    """A training checkpoint in eval mode gives what SAELens's save_inference_model of it
    gives (BatchTopK: JumpReLU at the learnt threshold)."""
    want = load_file(FIXTURES / name / "expected.safetensors")
    sae = load_saelens(FIXTURES / name)
    with torch.no_grad():
        f = sae.encode(want["x"])
        torch.testing.assert_close(f, want["f_inference"], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(sae(want["x"]), want["out_inference"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", LOADABLE)
def test_architecture_and_hook_come_through(name):
    folder = FIXTURES / name
    info = json.loads((folder / "fixture.json").read_text())
    meta = saelens_metadata(folder)
    assert meta["hook_name"] == info["hook"]["hook_name"]
    assert meta["model_name"] == info["hook"]["model_name"]
    assert meta.get("hook_name_out") == info["hook"].get("hook_name_out")
    assert meta["saelens_architecture"] == info["architecture"]
    expected = {"standard": "relu", "transcoder": "relu", "jumprelu_transcoder": "jumprelu"}
    expected["matryoshka_batchtopk"] = "matryoshka"
    expected["skip_transcoder"] = "relu"
    arch = expected.get(info["architecture"], info["architecture"])
    assert load_saelens(folder).cfg.name == arch


def test_training_architecture_recorded():
    assert saelens_metadata(FIXTURES / "batchtopk")["training_architecture"] == "batchtopk"


def test_transcoder_keeps_its_output_width():
    sae = load_saelens(FIXTURES / "transcoder")
    assert (sae.cfg.d_in, sae.cfg.d_out, sae.cfg.apply_b_dec_to_input) == (16, 12, False)


@pytest.mark.parametrize("name", REFUSED)
def test_inexpressible_refused_in_one_line(name):
    folder = FIXTURES / name
    cfg = json.loads((folder / "cfg.json").read_text())
    with pytest.raises(FormatError) as e:
        load_saelens(folder)
    msg = str(e.value)
    assert "\n" not in msg
    assert cfg["architecture"] in msg or cfg["normalize_activations"] in msg


def _copy(tmp_path, name="standard"):
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


def _edit_cfg(folder, **changes):
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(changes)
    (folder / "cfg.json").write_text(json.dumps(cfg))


def test_unknown_architecture_named(tmp_path):
    folder = _copy(tmp_path)
    _edit_cfg(folder, architecture="hyperbolic")
    with pytest.raises(FormatError, match="unknown SAELens architecture 'hyperbolic'"):
        load_saelens(folder)


def test_shapes_disagreeing_with_config(tmp_path):
    folder = _copy(tmp_path)
    _edit_cfg(folder, d_sae=64)
    with pytest.raises(FormatError, match="'W_enc' has shape"):
        load_saelens(folder)


def test_missing_tensor_named(tmp_path):
    folder = _copy(tmp_path, "jumprelu")
    w = load_file(folder / "sae_weights.safetensors")
    del w["threshold"]
    save_file(w, folder / "sae_weights.safetensors")
    with pytest.raises(FormatError, match="'threshold' is missing"):
        load_saelens(folder)


def test_not_a_saelens_folder(tmp_path):
    assert not is_saelens(tmp_path)
    assert is_saelens(FIXTURES / "standard")
    with pytest.raises(FormatError, match=r"cfg\.json not found"):
        load_saelens(tmp_path)


def test_corrupt_weights(tmp_path):
    folder = _copy(tmp_path)
    (folder / "sae_weights.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(FormatError, match="truncated or corrupt"):
        load_saelens(folder)


def test_rescaled_topk_folds_decoder_norms():
    """rescale_acts_by_decoder_norm is honoured by folding: saescope's decoder rows come out
    unit norm while the file's are not."""
    folder = FIXTURES / "topk_rescale"
    norms = load_file(folder / "sae_weights.safetensors")["W_dec"].norm(dim=-1)
    assert not torch.allclose(norms, torch.ones_like(norms), atol=1e-2)
    sae = load_saelens(folder)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones_like(norms))


def test_float64_file_stays_float64(tmp_path):
    folder = _copy(tmp_path, "gated")
    w = load_file(folder / "sae_weights.safetensors")
    save_file({k: v.double() for k, v in w.items()}, folder / "sae_weights.safetensors")
    want = load_file(FIXTURES / "gated" / "expected.safetensors")
    sae = load_saelens(folder)
    assert sae.W_enc.dtype == torch.float64
    with torch.no_grad():
        f = sae.encode(want["x"].double())
    torch.testing.assert_close(f.float(), want["f"], rtol=RTOL, atol=ATOL)


def test_skip_transcoder_keeps_its_skip_connection():
    """SAELens's SkipTranscoder: forward = decode(encode(x)) + x W_skip^T, W_skip (d_out, d_in)."""
    want = load_file(FIXTURES / "skip_transcoder" / "expected.safetensors")
    sae = load_saelens(FIXTURES / "skip_transcoder")
    assert sae.cfg.skip_connection and sae.W_skip.shape == (12, 16) and sae.W_skip.any()
    assert (want["out"] - want["x_hat"]).abs().max() > 1e-3  # the fixture's skip matters
    with torch.no_grad():
        torch.testing.assert_close(
            sae(want["x"]) - sae.decode(sae.encode(want["x"])), want["x"] @ sae.W_skip.T
        )


def test_jumprelu_skip_transcoder(tmp_path):
    """No SAELens fixture: the jumprelu_transcoder one with a W_skip added must give SAELens's
    recorded encode and decode and, as JumpReLUSkipTranscoder.forward, out + x W_skip^T."""
    folder = _copy(tmp_path, "jumprelu_transcoder")
    _edit_cfg(folder, architecture="jumprelu_skip_transcoder")
    w = load_file(folder / "sae_weights.safetensors")
    w["W_skip"] = torch.randn(12, 16)
    save_file(w, folder / "sae_weights.safetensors")
    want = load_file(folder / "expected.safetensors")
    sae = load_saelens(folder)
    assert sae.cfg.name == "jumprelu" and sae.cfg.skip_connection
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(want["x"]), want["f"], rtol=RTOL, atol=ATOL)
        out = want["out"] + want["x"] @ w["W_skip"].T
        torch.testing.assert_close(sae(want["x"]), out, rtol=RTOL, atol=ATOL)
    w["W_skip"] = torch.randn(16, 12)
    save_file(w, folder / "sae_weights.safetensors")
    with pytest.raises(FormatError, match=r"'W_skip' has shape \(16, 12\)"):
        load_saelens(folder)

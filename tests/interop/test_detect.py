"""Format detection: saescope's own folders, SAELens's, and a folder in neither."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saescope.errors import FormatError
from saescope.interop import detect, load, metadata
from saescope.saes import make_sae

SAELENS = Path(__file__).resolve().parents[1] / "fixtures" / "saelens"


def test_saescope_folder(tmp_path):
    sae = make_sae({"architecture": "topk", "d_in": 16, "d_sae": 32, "k": 4})
    sae.save(tmp_path / "sae")
    assert detect(tmp_path / "sae") == "saescope"
    x = torch.randn(5, 16)
    torch.testing.assert_close(load(tmp_path / "sae")(x), sae(x))


def test_saelens_folder():
    assert detect(SAELENS / "topk") == "saelens"
    want = load_file(SAELENS / "topk" / "expected.safetensors")
    with torch.no_grad():
        out = load(SAELENS / "topk")(want["x"])
    torch.testing.assert_close(out, want["out"], rtol=1e-4, atol=1e-5)


def test_neither_lists_what_was_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FormatError, match="looked for saescope") as e:
        detect(tmp_path)
    assert "\n" not in str(e.value) and "; SAELens (" in str(e.value)


def test_not_a_folder(tmp_path):
    with pytest.raises(FormatError, match="is not a folder"):
        load(tmp_path / "missing")


def test_metadata_of_a_saescope_folder_is_its_recorded_data(tmp_path):
    sae = make_sae({"architecture": "topk", "d_in": 16, "d_sae": 32, "k": 4})
    data = {"kind": "model", "model": "glassllm", "hook": "layers.1:in", "target": "layers.1"}
    sae.save(tmp_path / "tc", {"data": {**data, "context": 64}})
    assert metadata(tmp_path / "tc") == {
        "model_name": "glassllm",
        "hook_name": "layers.1:in",
        "hook_name_out": "layers.1",
        "context_size": 64,
    }
    sae.save(tmp_path / "bare")  # saved through the Python API: it says nothing
    assert metadata(tmp_path / "bare") == {}


def test_metadata_of_a_saelens_folder():
    meta = metadata(SAELENS / "transcoder")
    assert meta["model_name"] == "glassllm"
    assert meta["hook_name"] == "blocks.1.hook_resid_post"
    assert meta["hook_name_out"] == "blocks.1.hook_mlp_out"
    assert meta["context_size"] == 64

"""Format detection: saescope's own folders, SAELens's, and a folder in neither."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saescope.errors import FormatError
from saescope.interop import detect, load
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

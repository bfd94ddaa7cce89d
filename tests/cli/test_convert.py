"""`saescope convert SRC --to FORMAT --out DIR`: writes the folder, says what it wrote, and
fails in one line for a format it does not know or an SAE the format cannot express."""

import json

import torch

from saescope.cli import main
from saescope.interop import load, metadata
from saescope.saes import make_sae


def _sae(tmp_path, **fields):
    sae = make_sae({"architecture": "topk", "d_in": 8, "d_sae": 16, "k": 3, **fields})
    with torch.no_grad():
        sae.b_enc.add_(0.1)
    sae.save(tmp_path / "own", {"data": {"kind": "model", "model": "glassllm", "hook": "blocks.1"}})
    return sae


def test_converts_to_saelens_and_back(tmp_path, capsys):
    sae = _sae(tmp_path)
    assert (
        main(["convert", str(tmp_path / "own"), "--to", "saelens", "--out", str(tmp_path / "l")])
        == 0
    )
    out = capsys.readouterr().out
    assert "(saescope) ->" in out and "(saelens)" in out and "hook_name=blocks.1" in out
    assert json.loads((tmp_path / "l" / "cfg.json").read_text())["architecture"] == "topk"
    x = torch.randn(4, 8)
    assert torch.equal(load(tmp_path / "l")(x), sae(x))
    assert (
        main(["convert", str(tmp_path / "l"), "--to", "saescope", "--out", str(tmp_path / "s")])
        == 0
    )
    assert metadata(tmp_path / "s")["model_name"] == "glassllm"


def test_hook_recorded(tmp_path):
    make_sae({"architecture": "relu", "d_in": 8, "d_sae": 16}).save(tmp_path / "own")
    args = ["convert", str(tmp_path / "own"), "--to", "saelens", "--out", str(tmp_path / "l")]
    assert main([*args, "--hook", "blocks.0"]) == 0
    assert metadata(tmp_path / "l")["hook_name"] == "blocks.0"


def test_unknown_format_one_line(tmp_path, capsys):
    _sae(tmp_path)
    args = ["convert", str(tmp_path / "own"), "--to", "onnx", "--out", str(tmp_path / "x")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown format 'onnx'" in err and "saelens" in err


def test_inexpressible_one_line(tmp_path, capsys):
    _sae(tmp_path, d_out=6, apply_b_dec_to_input=False)
    args = ["convert", str(tmp_path / "own"), "--to", "saelens", "--out", str(tmp_path / "x")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no topk transcoder" in err


def test_not_an_sae_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = ["convert", str(tmp_path / "empty"), "--to", "saelens", "--out", str(tmp_path / "x")]
    assert main(args) == 2
    assert "looked for saescope" in capsys.readouterr().err

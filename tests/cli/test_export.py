"""`saescope export RUN --features ...`: both exports written end to end from an indexed run,
and the one-line errors (bad ids, nothing to write, an unindexed run, a folder with no run)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from saescope.cli import main
from saescope.cli.export import parse_features
from saescope.errors import InputError
from saescope.saes import make_sae
from tests.cli.common import one_line_error


@pytest.fixture(scope="module")
def fired(indexed_glass) -> list[int]:
    from saescope.analysis import FeatureIndex

    idx = FeatureIndex.open(indexed_glass)
    try:
        return [r["feature"] for r in idx.features("density", limit=3)]
    finally:
        idx.close()


def test_export_writes_the_html_and_the_neuronpedia_batch(indexed_glass, fired, tmp_path, capsys):
    html, np_dir = tmp_path / "f.html", tmp_path / "np"
    argv = ["export", str(indexed_glass), "--features", ",".join(map(str, fired))]
    assert main([*argv, "--html", str(html), "--neuronpedia", str(np_dir)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {html} (3 features" in out and "Neuronpedia batch files" in out
    data = re.search(r'id="export-data">(.*?)</script>', html.read_text(), re.S).group(1)
    assert [f["id"] for f in json.loads(data)["features"]] == fired
    (folder,) = np_dir.iterdir()
    batch = json.loads((folder / "batch-0.json").read_text())
    assert [f["feature_index"] for f in batch["features"]] == fired
    assert batch["sae_set"] == indexed_glass.name and batch["model_id"] == "glassllm"
    assert all(len(f["neuron_alignment_indices"]) == 3 for f in batch["features"])


def test_features_parse_lists_ranges_and_all():
    assert parse_features("1,5, 9") == [1, 5, 9]
    assert parse_features("3-5,8") == [3, 4, 5, 8]
    assert parse_features("all") is None
    with pytest.raises(InputError, match="'x' is not a feature id"):
        parse_features("1,x")


def test_a_range_is_checked_against_the_sae_before_it_is_listed():
    assert parse_features("0-3,15", d_sae=16) == [0, 1, 2, 3, 15]
    # a billion ids would take tens of GB as a list: refused from its bounds alone
    for text, bad in [("0-1000000000", 1000000000), ("2,7-16", 16), ("-3", -3), ("16", 16)]:
        with pytest.raises(InputError, match=f"feature {bad} is out of range.*0 to 15"):
            parse_features(text, d_sae=16)


def test_a_huge_range_is_a_one_line_error_before_the_index_is_read(tmp_path, capsys):
    sae = make_sae({"architecture": "topk", "d_in": 8, "d_sae": 16, "k": 2})
    run = sae.save(tmp_path / "bare")  # not indexed: the range is refused first
    argv = ["export", str(run), "--features", "0-1000000000000", "--html", "x.html"]
    err = one_line_error(capsys, argv)
    assert "feature 1000000000000 is out of range" in err and "0 to 15" in err


def test_bad_ids_and_missing_outputs_are_one_line_errors(indexed_glass, tmp_path, capsys):
    run = str(indexed_glass)
    html = ["--html", str(tmp_path / "f.html")]
    err = one_line_error(capsys, ["export", run, "--features", "1,a", *html])
    assert "'a' is not a feature id" in err
    err = one_line_error(capsys, ["export", run, "--features", "10000000", *html])
    assert "feature 10000000 is out of range" in err
    err = one_line_error(capsys, ["export", run, "--features", "1"])
    assert "give --html FILE and/or --neuronpedia DIR" in err
    err = one_line_error(capsys, ["export", run, "--features", "all", *html])
    assert "--features all is for --neuronpedia only" in err
    assert not (tmp_path / "f.html").exists()


def test_an_unindexed_run_or_no_run_is_a_one_line_error(tmp_path, capsys):
    torch.manual_seed(0)
    sae = make_sae({"architecture": "topk", "d_in": 8, "d_sae": 16, "k": 2})
    run = sae.save(tmp_path / "bare")
    err = one_line_error(capsys, ["export", str(run), "--features", "1", "--html", "x.html"])
    assert "not indexed" in err and "saescope index" in err
    err = one_line_error(capsys, ["export", str(tmp_path), "--features", "1", "--html", "x.html"])
    assert "holds no saved SAE" in err

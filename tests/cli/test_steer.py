"""`saescope steer`: the JSON object of the issue, steered equal to unsteered with no edit, an
edited feature's top tokens rising, the side-by-side table, and a one-line error for each kind
of bad input."""

import json
import shutil

import pytest
import torch

from saescope.cli import main
from saescope.runs import DataSpec
from saescope.saes import make_sae
from tests.cli.common import one_line_error

PROMPT = "Alice was beginning to get very"
GLASS = DataSpec("model", model="glassllm", hook="layers.2", context=128)


def _steer(capsys, run, *args) -> dict:
    assert main(["steer", str(run), "--prompt", PROMPT, *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_steer_json_and_table(glass_sae, capsys):
    plain = _steer(capsys, glass_sae, "--max-new-tokens", "12")
    assert set(plain) == {"prompt", "unsteered", "steered", "features"}
    assert plain["prompt"] == PROMPT and plain["features"] == []
    assert plain["steered"] == plain["unsteered"] and len(plain["unsteered"]) > 12
    sampled = _steer(capsys, glass_sae, "--temperature", "1.5", "--top-p", "0.9")
    assert sampled["steered"] == sampled["unsteered"]  # no seed given: one drawn for both
    # set a feature high: its top logit tokens become more likely, and the text changes
    got = _steer(capsys, glass_sae, "--feature", "7=10", "--feature", "12=4", "--seed", "3")
    assert [f["id"] for f in got["features"]] == [7, 12]
    assert [f["value"] for f in got["features"]] == [10.0, 4.0]
    for f in got["features"]:
        assert len(f["top_tokens"]) == 5
        assert set(f["top_tokens"][0]) == {"token", "p_unsteered", "p_steered"}
        assert all(0 <= t["p_unsteered"] <= 1 and 0 <= t["p_steered"] <= 1 for t in f["top_tokens"])
    top = got["features"][0]["top_tokens"][0]
    assert top["p_steered"] > top["p_unsteered"], top
    assert got["steered"] != got["unsteered"]
    assert got["unsteered"].startswith(plain["unsteered"])  # greedy: the seed changes nothing
    # the table: both continuations side by side, then the tokens of each edited feature
    assert main(["steer", str(glass_sae), "--prompt", PROMPT, "--feature", "7=10"]) == 0
    out = capsys.readouterr().out
    head = out.splitlines()[1]
    assert head.startswith("unsteered") and "steered" in head[len("unsteered") :]
    assert "p_unsteered" in out and json.dumps(top["token"]) in out


@pytest.fixture
def small_run(tmp_path):
    """A run folder of an untrained SAE (d_sae 64) on glassllm's layers.2."""
    torch.manual_seed(0)
    sae = make_sae({"architecture": "topk", "d_in": 128, "d_sae": 64, "k": 4})
    return sae.save(tmp_path / "run", {"data": GLASS.to_dict()})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--feature", "64=1"], "feature id 64 is out of range: the SAE has 64 features"),
        (["--feature", "3=nan"], "feature 3: value nan is not a finite number"),
        (["--feature", "3=inf"], "feature 3: value inf is not a finite number"),
        (["--feature", "3=abc"], "--feature 3=abc: value 'abc' is not a number"),
        (["--feature", "3"], "--feature 3: give ID=VALUE"),
        (["--feature", "x=1"], "feature id 'x' is not an integer"),
        (["--feature", "3=1", "--mode", "clamp"], "unknown edit mode 'clamp'"),
        (["--prompt", "Alice " * 200], "longer than the model's context of 128 positions"),
        (["--max-new-tokens", "200"], "exceeds the model's context of 128 positions"),
    ],
)
def test_bad_input_is_one_line(capsys, small_run, args, message):
    argv = ["steer", str(small_run), "--prompt", PROMPT, *args]
    assert message in one_line_error(capsys, argv)


def test_a_run_whose_model_is_gone(capsys, tmp_path):
    folder = tmp_path / "model"
    spec = DataSpec("model", model=str(folder), hook="layers.2", context=128)
    run = make_sae({"architecture": "topk", "d_in": 128, "d_sae": 64, "k": 4}).save(
        tmp_path / "run", {"data": spec.to_dict()}
    )
    err = one_line_error(capsys, ["steer", str(run), "--prompt", PROMPT])
    assert f"no model folder at {folder}" in err


def test_an_sae_of_another_width(capsys, tmp_path):
    run = make_sae({"architecture": "topk", "d_in": 64, "d_sae": 64, "k": 4}).save(
        tmp_path / "run", {"data": GLASS.to_dict()}
    )
    err = one_line_error(capsys, ["steer", str(run), "--prompt", PROMPT, "--feature", "1=2"])
    assert "the SAE takes d_in 64 but hook layers.2 has width 128" in err


def test_a_run_of_several_saes_needs_sae(capsys, small_run, tmp_path):
    both = tmp_path / "both"
    for name in ("sae_0", "sae_1"):
        shutil.copytree(small_run, both / name)
    err = one_line_error(capsys, ["steer", str(both), "--prompt", PROMPT])
    assert "holds several SAEs (sae_0, sae_1); choose one with --sae NAME" in err
    err = one_line_error(capsys, ["steer", str(both), "--prompt", PROMPT, "--sae", "sae_2"])
    assert "has no SAE 'sae_2'; its SAEs: sae_0, sae_1" in err
    argv = ["steer", str(both), "--prompt", PROMPT, "--sae", "sae_1", "--max-new-tokens", "3"]
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steered"]

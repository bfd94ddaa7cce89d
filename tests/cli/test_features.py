"""`saescope features RUN`: the features most specific to a word (table and JSON, the same
numbers as the library), the most active features without one, and the one-line errors."""

import json

import pytest

from saescope.cli import main
from saescope.runs import Run
from saescope.steer.search import token_features

TEXT = (
    "The Queen said to the King, and the King said to the Queen: off with his head! Alice "
    "looked at the Queen, and the Queen looked at the Mock Turtle, who sighed. The King was "
    "silent; the Queen of Hearts was not. "
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small glassllm run on a short text (its held-out contexts hold ' Queen')."""
    folder = tmp_path_factory.mktemp("features")
    (folder / "alice.txt").write_text(TEXT * 80)
    argv = ["train", "--arch", "topk", "--model", "glassllm", "--hook", "layers.1"]
    argv += ["--text", str(folder / "alice.txt"), "--context", "32", "--tokens", "4096"]
    argv += ["--d-sae", "128", "--k", "8", "--batch-size", "256", "--progress", "false"]
    assert main([*argv, "--out", str(folder / "run")]) == 0
    return folder / "run"


def _json(capsys, *argv) -> dict:
    capsys.readouterr()
    assert main(["features", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_gives_the_librarys_numbers_and_top_tokens(run, capsys):
    out = _json(capsys, run, "--token", " Queen", "--top", "4", "--tokens", "500")
    r = Run.open(run)
    model, tok = r.data.load_model()
    contexts = r.held_out_contexts(500)
    want = token_features(r.saes["run"], model, tok, "layers.1", contexts, " Queen", top=4)
    assert out["ids"] == tok.encode(" Queen") and out["contexts"] == contexts.shape[0]
    assert out["occurrences"] == want.occurrences > 0 and out["positions"] == want.positions
    assert len(out["by_activation"]) == len(out["by_logit"]) == 4
    got = [(f["feature"], f["score"]) for f in out["by_activation"]]
    assert got == [(f.feature, pytest.approx(f.score)) for f in want.by_activation]
    assert [f["feature"] for f in out["by_logit"]] == [f.feature for f in want.by_logit]
    assert all(len(f["top_tokens"]) == 5 for f in out["by_activation"] + out["by_logit"])


def test_the_table_names_the_word_and_both_rankings(run, capsys):
    capsys.readouterr()
    assert main(["features", str(run), "--token", " King", "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "' King' (token ids [622])" in text and "occurrences in" in text
    assert "by activation on it" in text and "by logit effect" in text
    assert text.count("mean_on") == 2 and "logit_rank" in text


def test_without_a_token_the_most_active_features(run, capsys):
    out = _json(capsys, run, "--top", "5")
    means = [f["mean"] for f in out["features"]]
    assert len(means) == 5 and means == sorted(means, reverse=True) and means[0] > 0
    assert all(0 < f["density"] <= 1 and f["max_act"] >= f["mean_active"] for f in out["features"])
    assert main(["features", str(run), "--top", "2"]) == 0
    assert "most active features" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--token", " Zyzzx€"], "is not in the tokenizer's text"),
        (["--token", " Rabbit"], "never occurs in the"),
        (["--top", "0"], "--top must be at least 1"),
        (["--tokens", "0"], "--tokens must be at least 1"),
        (["--sae", "sae_7"], "has no SAE 'sae_7'"),
    ],
)
def test_bad_input_is_one_line(run, capsys, argv, message):
    capsys.readouterr()
    assert main(["features", str(run), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_a_run_without_a_model_is_refused(tmp_path, capsys):
    argv = ["train", "--arch", "topk", "--tokens", "2048", "--progress", "false"]
    assert main([*argv, "--out", str(tmp_path / "syn")]) == 0
    capsys.readouterr()
    assert main(["features", str(tmp_path / "syn")]) == 2
    assert "was not trained on a model's activations" in capsys.readouterr().err

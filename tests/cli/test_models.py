"""The real-network path end to end through the CLI, on glassllm and the default corpus: a
small version of the acceptance run (train on the fly, eval with CE loss recovered), a
transcoder from a cache substituted for an MLP, and the one-line errors on bad input."""

import json

import pytest

from saescope.cli import main


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.slow
def test_topk_on_glassllm_layer2_small(tmp_path, capsys):
    run = tmp_path / "run"
    argv = [
        "train",
        "--arch",
        "topk",
        "--k",
        "32",
        "--model",
        "glassllm",
        "--hook",
        "layers.2",
        "--tokens",
        "200000",
        "--batch-size",
        "1024",
        "--lr",
        "0.004",
        "--out",
        str(run),
        "--progress",
        "false",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--tokens", "8192", "--json"]) == 0
    m = _json(capsys)
    assert m["l0"] <= 32 and m["n_tokens"] == 8192
    assert m["explained_variance"] >= 0.85, m  # 0.90 measured
    assert m["ce_loss_recovered"] >= 0.95, m  # 0.99 measured
    assert 0 < m["kl_div"] < 1.0 and m["ce_zero"] > m["ce_spliced"] > m["ce_clean"]
    assert (run / "feature_density.png").stat().st_size > 5000


@pytest.mark.slow
def test_transcoder_from_a_cache_replaces_the_mlp(tmp_path, capsys):
    cache, run = tmp_path / "cache", tmp_path / "tc"
    argv = [
        "harvest",
        "--model",
        "glassllm",
        "--hooks",
        "layers.0.mlp:in",
        "layers.0.mlp",
        "--tokens",
        "120000",
        "--out",
        str(cache),
    ]
    assert main(argv) == 0
    assert "layers.0.mlp:in (128), layers.0.mlp (128)" in capsys.readouterr().out
    argv = [
        "train",
        "--arch",
        "topk",
        "--k",
        "32",
        "--data",
        str(cache),
        "--hook",
        "layers.0.mlp:in",
        "--target",
        "layers.0.mlp",
        "--tokens",
        "240000",
        "--batch-size",
        "1024",
        "--lr",
        "0.004",
        "--out",
        str(run),
        "--progress",
        "false",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--tokens", "8192", "--json"]) == 0
    m = _json(capsys)
    fvu = 1 - m["explained_variance"]
    assert fvu < 0.12, m  # 0.065 measured
    assert m["ce_loss_recovered"] >= 0.95, m  # 0.99 measured (zero-ablating MLP 0 costs 3.3 nats)
    assert main(["eval", str(run), "--data", str(cache), "--tokens", "4096", "--json"]) == 0
    on_cache = _json(capsys)  # training rows: at least as well reconstructed
    assert on_cache["explained_variance"] >= m["explained_variance"] - 0.05


def _err(capsys, argv) -> str:
    assert main(argv) == 2
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("saescope: error")]
    assert len(errors) == 1, errors  # one line (a progress bar may precede it)
    return errors[0]


def test_bad_input_gets_one_line_errors(tmp_path, capsys):
    out = str(tmp_path / "o")
    msg = _err(capsys, ["hooks", "glasllm"])
    assert "unknown model 'glasllm'" in msg and "did you mean glassllm" in msg
    base = ["train", "--arch", "topk", "--model", "glassllm", "--out", out, "--steps", "2"]
    msg = _err(capsys, [*base, "--hook", "layers.2.mpl"])
    assert "no module 'layers.2.mpl'" in msg and "layers.2.mlp" in msg
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    msg = _err(capsys, [*base, "--hook", "layers.2", "--text", str(empty)])
    assert "the corpus is empty" in msg
    short = tmp_path / "short.txt"
    short.write_text("Off with her head!")
    msg = _err(capsys, [*base, "--hook", "layers.2", "--text", str(short)])
    assert "fewer than one context of 128" in msg
    msg = _err(capsys, [*base, "--hook", "layers.2", "--context", "500"])
    assert "longer than the model's 128 positions" in msg


def test_an_sae_whose_d_in_differs_from_the_cache_is_refused(tmp_path, capsys):
    cache = tmp_path / "cache"
    text = tmp_path / "t.txt"
    text.write_text("'Who are you?' said the Caterpillar. " * 200)
    assert (
        main(
            [
                "harvest",
                "--model",
                "glassllm",
                "--hooks",
                "layers.0",
                "--text",
                str(text),
                "--context",
                "32",
                "--out",
                str(cache),
            ]
        )
        == 0
    )
    run = tmp_path / "syn"
    assert (
        main(
            [
                "train",
                "--arch",
                "topk",
                "--k",
                "4",
                "--d-sae",
                "64",
                "--out",
                str(run),
                "--steps",
                "5",
                "--progress",
                "false",
            ]
        )
        == 0
    )
    msg = _err(capsys, ["eval", str(run), "--data", str(cache), "--hook", "layers.0"])
    assert "data has d_in=128" in msg and "the SAE expects d_in=" in msg
    msg = _err(capsys, ["eval", str(run), "--data", str(cache), "--hook", "layers.9"])
    assert "not in the cache" in msg


@pytest.mark.parametrize("argv", [["--hook", "layers.2"]])
def test_train_needs_a_source_and_refuses_both(tmp_path, capsys, argv):
    msg = _err(
        capsys,
        [
            "train",
            "--arch",
            "topk",
            "--model",
            "glassllm",
            "--data",
            "x.npy",
            "--out",
            str(tmp_path / "o"),
            *argv,
        ],
    )
    assert "not both" in msg


@pytest.mark.slow
def test_an_encoder_trains_on_the_fly_and_evaluates_without_downstream(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(
        "The Caterpillar and Alice looked at each other for some time in silence. " * 60
    )
    run = tmp_path / "mini"
    argv = ["train", "--arch", "topk", "--k", "8", "--model", "minilm", "--hook",
            "encoder.layer.2", "--text", str(text), "--context", "32", "--batch-size", "124",
            "--steps", "4", "--out", str(run), "--progress", "false"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--tokens", "124", "--json"]) == 0
    m = _json(capsys)
    assert m["n_tokens"] == 31 and m["l0"] <= 8  # the held-out split: 1 context of 31 tokens
    assert m["downstream"].startswith("skipped: BertModel gives no next-token logits")
    assert "ce_loss_recovered" not in m


def test_more_bad_input_one_line_each(tmp_path, capsys):
    out = str(tmp_path / "o")
    msg = _err(capsys, ["harvest", "--model", "glassllm", "--hooks", "layers.0", "--tokens",
                        "0", "--out", out])  # fmt: skip
    assert "--tokens must be at least 1" in msg
    msg = _err(capsys, ["harvest", "--model", "glassllm", "--hooks", "layers.0",
                        "--batch-size", "0", "--out", out])  # fmt: skip
    assert "--batch-size and --shard-contexts must be at least 1" in msg
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    msg = _err(capsys, ["harvest", "--model", "glassllm", "--hooks", "layers.0", "--tokens",
                        "500", "--out", str(a_file)])  # fmt: skip
    assert "is a file; give a folder" in msg
    msg = _err(capsys, ["train", "--arch", "topk", "--hook", "layers.2", "--out", out])
    assert "--hook apply to --model or a cache, not --data synthetic" in msg


def test_eval_refuses_a_changed_text_and_scores_an_sae_on_a_module_input(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("'Who are you?' said the Caterpillar, and Alice replied shyly. " * 400)
    run = tmp_path / "r"
    argv = ["train", "--arch", "topk", "--k", "16", "--model", "glassllm", "--hook",
            "layers.0.mlp:in", "--text", str(text), "--context", "64", "--tokens", "20000",
            "--lr", "0.004", "--out", str(run), "--progress", "false"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    m = _json(capsys)
    # the SAE replaces the MLP's input and the MLP still runs (spliced as its output: -0.4)
    assert m["explained_variance"] > 0.8 and m["ce_loss_recovered"] > 0.9, m  # 0.93, 0.99
    text.write_text("Something else entirely, and longer than before. " * 400)
    msg = _err(capsys, ["eval", str(run)])
    assert "changed since training" in msg


def test_harvest_device_cuda_without_cuda_is_one_line(tmp_path, capsys):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda is valid here")
    out = str(tmp_path / "c")
    argv = ["harvest", "--model", "glassllm", "--hooks", "layers.0", "--out", out]
    msg = _err(capsys, [*argv, "--dtype", "bfloat16", "--device", "cuda"])
    assert "'cuda' is not available" in msg and "--device cpu" in msg
    assert not (tmp_path / "c").exists()

"""`saescope sweep`: a tiny synthetic sweep from the command line (table printed, files
written, its SAEs evaluated by `saescope eval`, one of them with --sae), and its one-line
errors."""

import json

import pytest

from saescope.cli import main
from tests.cli.common import one_line_error

TINY = ["--data", "synthetic", "--steps", "8", "--batch-size", "128", "--init-samples", "128"]
TINY += ["--d-sae", "16", "--eval-tokens", "512", "--progress", "false"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "sw"
    argv = ["sweep", "--arch", "topk,jumprelu", "--target-l0", "2,3", "--out", str(out)]
    return out, main(argv + TINY)


def test_sweep_prints_the_table_and_writes_its_files(swept, capsys):
    out, status = swept
    assert status == 0
    assert sorted(p.name for p in out.glob("sae_*")) == [f"sae_{i}" for i in range(4)]
    assert len((out / "sweep.csv").read_text().splitlines()) == 5
    assert (out / "pareto_explained_variance.png").is_file()


def test_eval_of_a_sweep_evaluates_each_sae_or_the_one_chosen(swept, capsys):
    out, _ = swept
    capsys.readouterr()
    assert main(["eval", str(out), "--tokens", "512", "--json"]) == 0
    every = json.loads(capsys.readouterr().out)
    assert sorted(every) == [f"sae_{i}" for i in range(4)]
    assert main(["eval", str(out), "--sae", "sae_2", "--tokens", "512", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["architecture"] == "jumprelu" and one["l0"] == every["sae_2"]["l0"]
    err = one_line_error(capsys, ["eval", str(out), "--sae", "sae_9"])
    assert "no SAE 'sae_9'; its SAEs: sae_0, sae_1, sae_2, sae_3" in err


def test_resume_of_a_finished_sweep_evaluates_again_and_refuses_another_plan(swept, capsys):
    out, _ = swept
    table = (out / "sweep.csv").read_text()
    argv = ["sweep", "--out", str(out), "--resume", "--eval-tokens", "512", "--progress", "false"]
    assert main(argv) == 0
    assert (out / "sweep.csv").read_text() == table  # the same SAEs, the same held-out data
    assert "evaluate" not in capsys.readouterr().err  # --progress false: no bars
    argv = ["sweep", "--out", str(out), "--resume", "--arch", "relu", "--target-l0", "2,3"]
    assert "is a sweep of topk,jumprelu at target L0 2,3" in one_line_error(capsys, argv)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--arch", "topk,wide", "--target-l0", "2"], "unknown architecture 'wide'; known:"),
        (["--arch", "topk", "--target-l0", "2,2"], "--target-l0 names 2 more than once"),
        (["--arch", "topk", "--target-l0", "0"], "must be above 0"),
        (["--arch", "topk", "--target-l0", "16"], "target L0 16 is not below d_sae=16"),
        (["--arch", "topk", "--target-l0", "2", "--tokens", "100"], "--tokens or --steps"),
        (["--resume"], "nothing to resume"),
    ],
)
def test_bad_input_is_one_line(capsys, tmp_path, extra, message):
    argv = ["sweep", "--out", str(tmp_path / "x"), *extra, *TINY]
    assert message in one_line_error(capsys, argv)

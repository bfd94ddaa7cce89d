"""`saescope train`'s options for several processes, on one process."""

from saescope.cli import build_parser, main
from tests.cli.common import one_line_error


def test_the_options_are_there():
    ns = build_parser().parse_args(["train", "--out", "r", "--parallel", "ddp"])
    assert ns.parallel == "ddp" and ns.dist_timeout == 60


def test_a_bad_timeout_is_one_line(capsys, tmp_path):
    argv = ["train", "--arch", "topk", "--steps", "2", "--out", str(tmp_path / "r")]
    err = one_line_error(capsys, [*argv, "--dist-timeout", "0"])
    assert "--dist-timeout must be a positive number of seconds" in err
    assert not (tmp_path / "r").exists()


def test_ddp_on_one_process_is_plain_training(tmp_path, capsys):
    argv = ["train", "--arch", "topk", "--k", "2", "--d-sae", "16", "--steps", "3"]
    argv += ["--batch-size", "64", "--init-samples", "64", "--progress", "false"]
    assert main([*argv, "--parallel", "ddp", "--out", str(tmp_path / "r")]) == 0
    assert "saved to" in capsys.readouterr().out

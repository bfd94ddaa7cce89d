"""Bad input: one clear line naming the problem, and nothing lost."""

import numpy as np
import pytest

import saescope
from saescope import ConfigError
from saescope.cli import main
from saescope.saes import make_sae
from tests.cli.common import one_line_error


def test_unknown_architecture_lists_known(capsys, tmp_path):
    err = one_line_error(capsys, ["train", "--arch", "nope", "--out", str(tmp_path / "r")])
    for name in saescope.ARCHITECTURES:
        assert name in err
    with pytest.raises(ConfigError, match="known: relu"):
        make_sae({"architecture": "nope", "d_in": 4, "d_sae": 8})


@pytest.mark.parametrize("k", [0, -1, 65])
def test_k_out_of_range(capsys, tmp_path, k):
    err = one_line_error(
        capsys, ["train", "--arch", "topk", "--k", str(k), "--d-sae", "64", "--out", str(tmp_path)]
    )
    assert "k must be between 1 and d_sae=64" in err


def test_option_for_another_architecture(capsys, tmp_path):
    err = one_line_error(capsys, ["train", "--arch", "relu", "--k", "3", "--out", str(tmp_path)])
    assert "--k applies to topk, batchtopk, matryoshka, not relu" in err


def test_wrong_d_in_on_eval(capsys, tmp_path):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--arch",
                "topk",
                "--k",
                "2",
                "--steps",
                "5",
                "--out",
                str(run),
                "--progress",
                "false",
            ]
        )
        == 0
    )
    np.save(tmp_path / "acts.npy", np.zeros((10, 7), np.float32))
    err = one_line_error(capsys, ["eval", str(run), "--data", str(tmp_path / "acts.npy")])
    assert "d_in=7" in err and "d_in=4" in err


def test_nan_batch_cli_message(capsys, tmp_path):
    x = np.random.default_rng(0).normal(size=(512, 4)).astype(np.float32)
    x[300, 2] = np.inf
    np.save(tmp_path / "acts.npy", x)
    err = one_line_error(
        capsys,
        [
            "train",
            "--arch",
            "relu",
            "--data",
            str(tmp_path / "acts.npy"),
            "--batch-size",
            "512",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert "NaN or Inf" in err


def test_cli_load_errors_are_one_line(capsys, tmp_path):
    err = one_line_error(capsys, ["eval", str(tmp_path / "missing")])
    assert "holds no saved SAE" in err


def test_resume_without_checkpoint(capsys, tmp_path):
    err = one_line_error(capsys, ["train", "--arch", "topk", "--out", str(tmp_path), "--resume"])
    assert "nothing to resume" in err


def test_existing_run_is_not_overwritten(capsys, tmp_path):
    argv = [
        "train",
        "--arch",
        "topk",
        "--steps",
        "3",
        "--out",
        str(tmp_path),
        "--progress",
        "false",
    ]
    assert main(argv) == 0
    before = (tmp_path / "sae_weights.safetensors").read_bytes()
    err = one_line_error(capsys, [*argv, "--seed", "5"])
    assert "already holds a run" in err and "--resume" in err
    assert (tmp_path / "sae_weights.safetensors").read_bytes() == before
    assert main([*argv, "--seed", "5", "--overwrite"]) == 0
    assert (tmp_path / "sae_weights.safetensors").read_bytes() != before


def test_a_warning_is_one_line_and_only_while_the_command_runs(monkeypatch, capsys):
    import warnings

    from saescope.cli import hooks

    def warns(ns):
        warnings.warn("the threshold rests on 512 tokens", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(hooks, "run", warns)
    before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # the suite turns warnings into errors
        assert main(["hooks", "glassllm"]) == 0
    assert capsys.readouterr().err == "saescope: warning: the threshold rests on 512 tokens\n"
    assert warnings.showwarning is before


@pytest.mark.parametrize("target", ["0", "-2", "64", "100"])
def test_target_l0_outside_the_latents(capsys, tmp_path, target):
    for arch in ("relu", "topk"):
        argv = ["train", "--arch", arch, "--target-l0", target, "--d-sae", "64"]
        err = one_line_error(capsys, [*argv, "--out", str(tmp_path)])
        assert "target_l0 must be above 0 and below d_sae=64" in err


def test_k_and_target_l0_together(capsys, tmp_path):
    argv = ["train", "--arch", "topk", "--k", "3", "--target-l0", "3", "--out", str(tmp_path)]
    assert "give --k or --target-l0 for topk, not both" in one_line_error(capsys, argv)


def test_a_folder_it_cannot_write_is_one_line(capsys, tmp_path, monkeypatch):
    """Commands write beside an SAE (its index, its density plot); a read-only folder (a peer
    SAE in a shared cache) is one line saying what to do, not a traceback."""
    from saescope.cli import runs

    def denied(ns):
        raise PermissionError(13, "Permission denied", str(tmp_path / "index.sqlite"))

    monkeypatch.setattr(runs, "run", denied)
    assert main(["runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"cannot write {tmp_path / 'index.sqlite'}: permission denied" in err
    assert "copy the folder somewhere writable" in err

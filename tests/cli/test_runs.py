"""`saescope runs DIR`: the runs under a folder in one table (or a JSON list), unfinished runs
shown as steps done/total, and one-line errors for a folder with no runs or none at all."""

import json

import pytest
import torch

from saescope.cli import main
from saescope.errors import InputError
from saescope.saes import make_sae
from saescope.training import TrainConfig, train

TRAIN = ["--steps", "4", "--batch-size", "64", "--init-samples", "64", "--progress", "false"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """root/topk and root/more/relu from saescope train, root/stopped stopped at step 2 of 4."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", "--arch", "topk", "--k", "2", "--out", str(root / "topk"), *TRAIN]) == 0
    assert main(["train", "--arch", "relu", "--out", str(root / "more" / "relu"), *TRAIN]) == 0
    sae = make_sae({"architecture": "topk", "d_in": 3, "d_sae": 6, "k": 2})
    cfg = TrainConfig(steps=4, progress=False, init_samples=8, log_every=1, checkpoint_every=2)
    batches = [torch.randn(8, 3, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    with pytest.raises(InputError):
        train(sae, batches, cfg, root / "stopped")
    return root


def test_the_table_lists_every_run(root, capsys):
    capsys.readouterr()
    assert main(["runs", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = lines[0].split()
    assert head == [
        *["run", "architecture", "d_sae", "k", "data", "steps", "tokens"],
        *["l0", "explained_variance", "dead_fraction"],
    ]  # no sae column: no run holds several
    rows = [line.split() for line in lines[2:5]]
    assert [r[0] for r in rows] == [str(root / p) for p in ("more/relu", "stopped", "topk")]
    relu, stopped, topk = rows
    assert relu[1:4] == ["relu", "32", "-"] and relu[4:6] == ["synthetic", "4"]
    assert topk[1:4] == ["topk", "32", "2"] and topk[5] == "4" and topk[6] == str(4 * 64)
    assert stopped[1:6] == ["topk", "6", "2", "-", "2/4"]
    assert "1 not finished (steps done/total)" in lines[5] and "--resume" in lines[5]
    assert 0 <= float(topk[7]) <= 2  # l0 under k


def test_json_is_a_list_of_every_sae(root, capsys):
    capsys.readouterr()
    assert main(["runs", str(root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["architecture"] for r in rows] == ["relu", "topk", "topk"]
    assert [r["finished"] for r in rows] == [True, False, True]
    assert rows[2]["data_spec"]["kind"] == "synthetic" and rows[2]["total_steps"] == 4
    assert all({"l0", "explained_variance", "dead_fraction"} <= set(r) for r in rows)


def _err(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_no_runs_or_no_folder_is_one_line(tmp_path, capsys):
    msg = _err(capsys, ["runs", str(tmp_path)])
    assert msg.startswith(f"saescope: error: no runs under {tmp_path} (no folder there holds")
    msg = _err(capsys, ["runs", str(tmp_path / "absent")])
    assert "absent does not exist; give a folder holding runs" in msg

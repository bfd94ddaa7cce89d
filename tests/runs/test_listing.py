"""`find_runs`: the runs under a folder (nested, several SAEs in one run, unfinished ones from
their checkpoint's header, a bare saved SAE, an unreadable cfg.json), without loading weights;
the one-line errors for a missing folder or a file."""

import json

import numpy as np
import pytest
import torch

from saescope.data import ArticleTaskConfig
from saescope.errors import InputError
from saescope.runs import DataSpec, build_sae, find_runs, train_run
from saescope.runs.listing import describe_data, run_folders
from saescope.saes import make_sae, save
from saescope.training import TrainConfig, train

CFG = TrainConfig(steps=6, progress=False, init_samples=64, log_every=3)


def _train(path, archs=("topk",), data=None):
    spec = data or DataSpec.synthetic(ArticleTaskConfig(), seed=1)
    stream = spec.open(batch_size=64)
    torch.manual_seed(0)
    saes = [build_sae(a, stream, d_sae=16) for a in archs]
    return spec, train_run(saes[0] if len(saes) == 1 else saes, spec, stream, CFG, path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """root/a (topk, synthetic), root/deep/er/sweep (relu and topk in sae_0/, sae_1/), root/file
    (a .npy file), root/stopped (a checkpoint at step 4 of 6), root/bare (an SAE saved without
    a run) and root/notes (no run)."""
    root = tmp_path_factory.mktemp("runs")
    out = {"a": _train(root / "a")}
    out["sweep"] = _train(root / "deep" / "er" / "sweep", ("relu", "topk"))
    x = np.random.default_rng(0).standard_normal((512, 6)).astype(np.float32)
    np.save(root / "x.npy", x)
    out["file"] = _train(root / "file", data=DataSpec.file(root / "x.npy"))
    sae = make_sae({"architecture": "relu", "d_in": 6, "d_sae": 12})
    batches = [torch.from_numpy(x[i * 64 : (i + 1) * 64]) for i in range(5)]
    stopped = TrainConfig(steps=6, progress=False, init_samples=64, log_every=2, checkpoint_every=2)
    with pytest.raises(InputError, match="ended after 5 batches"):
        train(sae, batches, stopped, root / "stopped", metadata={"data": {"kind": "file"}})
    save(make_sae({"architecture": "topk", "d_in": 4, "d_sae": 8, "k": 2}), root / "bare")
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("no run here")
    return root, out


def _by_run(rows, root):
    return {(str(r["run"]).removeprefix(str(root) + "/"), r["sae"]): r for r in rows}


def test_every_run_is_found_once_with_several_saes_grouped(runs):
    root, _ = runs
    assert [p.relative_to(root).as_posix() for p in run_folders(root)] == [
        "a",
        "bare",
        "deep/er/sweep",
        "file",
        "stopped",
    ]
    rows = find_runs(root)
    assert list(_by_run(rows, root)) == [
        ("a", None),
        ("bare", None),
        ("deep/er/sweep", "sae_0"),
        ("deep/er/sweep", "sae_1"),
        ("file", None),
        ("stopped", None),
    ]
    assert find_runs(root / "deep") == [r for r in rows if "sweep" in r["run"]]
    assert find_runs(root / "notes") == []


def test_a_finished_run_gives_its_architecture_data_steps_and_final_metrics(runs):
    root, out = runs
    rows = _by_run(find_runs(root), root)
    a = rows[("a", None)]
    spec, result = out["a"]
    final = result.final_metrics[0]
    assert a["finished"] is True and a["architecture"] == "topk"
    assert (a["d_in"], a["d_out"], a["d_sae"], a["k"]) == (4, 4, 16, 2)
    assert a["data"] == "synthetic" and a["data_spec"] == spec.to_dict()
    assert a["steps"] == a["total_steps"] == 6 and a["tokens"] == 6 * 64
    for key in ("l0", "explained_variance", "dead_fraction", "loss"):
        assert a[key] == final[key], key
    assert "sae" not in {k for k in a if k != "sae"} and "step" not in a
    sweep = [rows[("deep/er/sweep", f"sae_{i}")] for i in (0, 1)]
    assert [r["architecture"] for r in sweep] == ["relu", "topk"]
    assert [r["k"] for r in sweep] == [None, 2]
    assert [r["l0"] for r in sweep] == [m["l0"] for m in out["sweep"][1].final_metrics]
    f = rows[("file", None)]
    assert f["data"] == f"file {root / 'x.npy'}" and f["d_in"] == 6


def test_an_unfinished_run_is_described_from_its_checkpoint(runs):
    root, _ = runs
    r = _by_run(find_runs(root), root)[("stopped", None)]
    assert r["finished"] is False and r["architecture"] == "relu" and r["d_sae"] == 12
    assert (r["steps"], r["total_steps"], r["tokens"]) == (4, 6, 4 * 64)
    lines = (root / "stopped" / "metrics.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in lines]
    last = next(m for m in logged if m["step"] == 4)
    assert r["l0"] == last["l0"] and r["explained_variance"] == last["explained_variance"]
    assert r["data"] == "file" and r["data_spec"] == {"kind": "file"}


def test_a_bare_sae_and_an_unreadable_cfg(runs, tmp_path):
    root, _ = runs
    bare = _by_run(find_runs(root), root)[("bare", None)]
    assert bare["architecture"] == "topk" and bare["data"] == "-" and bare["data_spec"] is None
    assert bare["steps"] is None and "l0" not in bare
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cfg.json").write_text("{not json")
    (tmp_path / "bad" / "sae_weights.safetensors").write_bytes(b"")
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "checkpoint.safetensors").write_bytes(b"\x00" * 4)
    bad, torn = find_runs(tmp_path)
    assert bad["run"] == str(tmp_path / "bad") and "is not valid JSON" in bad["error"]
    assert torn["finished"] is None and "not a readable saescope checkpoint" in torn["error"]


def test_weights_are_not_read(runs, monkeypatch):
    root, _ = runs

    def refuse(*_a, **_k):
        raise AssertionError("weights loaded")

    monkeypatch.setattr("safetensors.torch.load_file", refuse)
    monkeypatch.setattr("saescope.saes.base.SAE.load", refuse)
    assert len(find_runs(root)) == 6


@pytest.mark.parametrize(
    "data, words",
    [
        (None, "-"),
        ({"kind": "synthetic", "seed": 0}, "synthetic"),
        ({"kind": "model", "model": "glassllm", "hook": "layers.2"}, "model glassllm layers.2"),
        (
            {"kind": "cache", "path": "/c", "hook": "m:in", "target": "m"},
            "cache /c m:in -> m",
        ),
    ],
)
def test_describe_data(data, words):
    assert describe_data(data) == words


def test_a_missing_folder_or_a_file_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"nowhere does not exist; give a folder holding runs"):
        find_runs(tmp_path / "nowhere")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(InputError, match=r"f\.txt is not a folder"):
        find_runs(tmp_path / "f.txt")

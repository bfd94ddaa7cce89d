"""The seed demos' JSON file: its shape, and that its numbers mean what they say."""

import json
import os
from dataclasses import replace

import pytest
import torch

from saescope.analysis import FeatureIndex
from saescope.errors import ConfigError
from saescope.experiments import seed_demos
from saescope.experiments.monosemanticity import class_means, hidden_activations, purity

CFG = seed_demos.quick_config()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = tmp_path_factory.mktemp("seed") / "demo" / "seed_demos.json"
    seed_demos.build(path, seed=0, cfg=CFG, progress=False)
    return path, json.loads(path.read_text())


def test_shape(built):
    _, d = built
    mono = CFG.mono
    assert d["format"] == seed_demos.FORMAT
    assert d["classes"] == [f"class {c}" for c in range(mono.n_classes)]
    assert [lvl["l1_coef"] for lvl in d["levels"]] == list(CFG.l1_coefs)
    assert d["default"] == list(CFG.l1_coefs).index(CFG.default)
    assert [u["id"] for u in d["neurons"]["units"]] == sorted(
        u["id"] for u in d["neurons"]["units"]
    )
    assert len(d["inputs"]) == mono.n_classes * CFG.inputs_per_class
    assert [i["class"] for i in d["inputs"]] == sorted(i["class"] for i in d["inputs"])
    for lvl in d["levels"]:
        feats = lvl["features"]
        assert lvl["alive"] == len(feats) <= mono.d_sae
        assert len(lvl["neuron_fvu"]) == mono.d_hidden
        assert all(len(f["class_means"]) == mono.n_classes for f in feats)
        assert [f["class"] for f in feats] == sorted(f["class"] for f in feats)
        acts = lvl["heatmap"]["acts"]
        assert lvl["heatmap"]["features"] == [f["id"] for f in feats]
        assert len(acts) == len(d["inputs"]) and all(len(r) == len(feats) for r in acts)
        assert lvl["heatmap"]["max"] == pytest.approx(max(max(r) for r in acts), abs=1e-3)


def test_numbers_mean_what_they_say(built):
    _, d = built
    levels = d["levels"]
    l0 = [lvl["l0"] for lvl in levels]
    mse = [lvl["mse"] for lvl in levels]
    assert l0 == sorted(l0, reverse=True) and l0[0] > 2 * l0[-1]  # sparser along the slider
    assert mse == sorted(mse) and mse[-1] > mse[0]  # and reconstruction pays for it
    # at the sparse end the features are purer than the neurons: the demo's point
    assert levels[-1]["mean_purity"] > d["neurons"]["mean_purity"] + 0.2
    for lvl in levels:
        for f in lvl["features"]:
            means = f["class_means"]
            assert f["class"] == means.index(max(means))
            # the means are rounded to 4 decimals in the file: a weak feature's purity moves
            tol = 1e-3 + 8 * 5e-5 / sum(means)
            assert f["purity"] == pytest.approx(max(means) / sum(means), abs=tol)
        pur = [f["purity"] for f in lvl["features"]]
        assert lvl["mean_purity"] == pytest.approx(sum(pur) / len(pur), abs=1e-3)
        assert all(0 <= x <= 1 + 1e-6 for x in lvl["neuron_fvu"])


def test_neurons_match_the_experiment(built):
    _, d = built
    H, labels, acc = hidden_activations(0, CFG.mono)
    means = class_means(H, labels, CFG.mono.n_classes)
    assert d["accuracy"] == acc
    for u in d["neurons"]["units"]:
        assert u["class_means"] == pytest.approx(means[u["id"]].tolist(), abs=1e-3)
        assert u["purity"] == pytest.approx(float(purity(means[u["id"] : u["id"] + 1])), abs=1e-3)
    # the heatmap's rows are those inputs' activations: a neuron-level check through the labels
    assert [i["class"] for i in d["inputs"]] == [int(labels[i["index"]]) for i in d["inputs"]]


def test_classifier_index_names_each_features_class(built):
    """The default stop's SAE, saved with its classes index: the feature browser's top example
    of each feature is the class the demo file gives it."""
    path, d = built
    folder = path.parent / seed_demos.CLASSIFIER_RUN
    assert d["index_run"] == folder.name
    idx = FeatureIndex.open(folder)
    try:
        assert idx.info["kind"] == "classes" and idx.info["d_sae"] == CFG.mono.d_sae
        for f in d["levels"][d["default"]]["features"]:
            if f["purity"] > 0.9:
                assert idx.feature(f["id"])["top"][0]["tokens"] == [d["classes"][f["class"]]]
    finally:
        idx.close()


def test_sample_inputs_per_class():
    labels = torch.arange(4).repeat_interleave(10)
    rows = seed_demos.sample_inputs(labels, 3, seed=1)
    assert [int(labels[i]) for i in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert len(set(rows)) == 12
    assert rows == seed_demos.sample_inputs(labels, 3, seed=1)


def test_neuron_fvu():
    H = torch.tensor([[1.0, 2.0, 5.0], [3.0, 2.0, 5.0], [5.0, 2.0, 5.0]])
    fvu = seed_demos.neuron_fvu(H, H.clone().index_fill_(1, torch.tensor([0]), 3.0))
    assert fvu.tolist() == pytest.approx([1.0, 0.0, 0.0])  # the mean explains nothing; constants 0


def test_ensure_builds_only_when_missing_or_stale(tmp_path, monkeypatch):
    path = tmp_path / "seed_demos.json"
    calls = []

    def fake_build(p, progress=True, **kw):
        calls.append(p)
        p.write_text(json.dumps({"format": seed_demos.FORMAT}))
        return p

    monkeypatch.setattr(seed_demos, "build", fake_build)
    assert seed_demos.ensure(path, progress=False) == path and len(calls) == 1
    seed_demos.ensure(path, progress=False)
    assert len(calls) == 1  # current: not rebuilt
    path.write_text(json.dumps({"format": seed_demos.FORMAT + 1}))
    seed_demos.ensure(path, progress=False)
    path.write_text("{not json")
    seed_demos.ensure(path, progress=False)
    assert len(calls) == 3


def test_ensure_defaults_to_runs_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(seed_demos, "build", lambda p, **kw: p.parent.mkdir(parents=True))
    assert seed_demos.ensure(None) == seed_demos.DEFAULT_PATH
    assert (tmp_path / "runs" / "demo").is_dir()


@pytest.mark.parametrize("coefs", [(), (1.0, 0.5), (1.0, 1.0)])
def test_bad_l1_coefs(coefs):
    with pytest.raises(ConfigError, match="l1_coefs"):
        seed_demos.build_data(cfg=replace(CFG, l1_coefs=coefs), progress=False)


def test_written_atomically_and_compact(built):
    path, _ = built
    assert not [p for p in os.listdir(path.parent) if p.endswith(".tmp")]
    assert path.stat().st_size < 200_000

"""The Neuronpedia export on the stand-in index (tests/explore/common.py): no Pearson
correlation the index cannot back, and a second export into the same folder leaves none of
the first one's batch files or skipped list behind. The export of a real index is tested field
by field in tests/explore/test_export.py."""

from __future__ import annotations

import json

import pytest

from saescope.analysis import export_neuronpedia
from saescope.analysis.neuronpedia import remove_stale
from saescope.errors import InputError
from tests.explore.common import FakeIndex


def _features(folder) -> list[int]:
    batches = [p for p in folder.glob("batch-*.json") if p.stem.split("-")[1].isdigit()]
    batches.sort(key=lambda p: int(p.stem.split("-")[1]))
    return [f["feature_index"] for p in batches for f in json.loads(p.read_text())["features"]]


def test_correlated_features_carry_the_cofiring_score_and_no_pearson(tmp_path):
    index = FakeIndex(8)
    folder = export_neuronpedia(index, tmp_path, [3, 5])
    for row in json.loads((folder / "batch-0.json").read_text())["features"]:
        cofiring = index.feature(row["feature_index"])["cofiring"]
        assert row["correlated_features_indices"] == [c["feature"] for c in cofiring]
        assert row["correlated_features_l1"] == [c["score"] for c in cofiring]
        assert row["correlated_features_pearson"] == []  # not the Ochiai score under its name


def test_a_smaller_export_into_the_same_folder_leaves_nothing_stale(tmp_path):
    index = FakeIndex(8)
    folder = export_neuronpedia(index, tmp_path, None, per_batch=2)  # 7 fired: 4 batches
    assert len(list(folder.glob("batch-*.json"))) == 4
    assert (folder / "skipped_indexes.json").exists()
    (folder / "notes.txt").write_text("mine")
    (folder / "batch-notes.json").write_text("{}")  # not an export's batch: kept
    again = export_neuronpedia(index, tmp_path, [2, 6, 4], per_batch=2)
    assert again == folder
    assert sorted(p.name for p in folder.glob("batch-*.json")) == [
        "batch-0.json",
        "batch-1.json",
        "batch-notes.json",
    ]
    assert _features(folder) == [2, 6, 4]
    assert not (folder / "skipped_indexes.json").exists()
    assert (folder / "notes.txt").read_text() == "mine"
    settings = json.loads((folder / "run_settings.json").read_text())
    assert settings["features"] == [2, 6, 4]


def test_bad_ids_remove_nothing(tmp_path):
    folder = export_neuronpedia(FakeIndex(8), tmp_path, [1, 2])
    with pytest.raises(InputError, match="feature 8 is out of range"):
        export_neuronpedia(FakeIndex(8), tmp_path, [1, 8])
    assert _features(folder) == [1, 2]
    assert remove_stale(folder) == [folder / "batch-0.json"]
    assert _features(folder) == [] and (folder / "run_settings.json").exists()

"""/api/seed (saescope.explore.seed): what the routes return, and the 404s that say how to
make the demo data."""

import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from saescope.explore import seed


def client(demo):
    app = FastAPI()
    app.state.demo = demo
    app.include_router(seed.router)
    return TestClient(app)


def level(i, n_feat):
    feats = [
        {"id": 10 + j, "class": j % 2, "purity": 0.9, "class_means": [1.0, 0.1]}
        for j in range(n_feat)
    ]
    return {
        "l1_coef": float(i + 1),
        "l0": 5.0 - i,
        "mse": 1.0 + i,
        "explained_variance": 0.9,
        "alive": n_feat,
        "d_sae": 8,
        "mean_purity": 0.5 + i / 10,
        "median_purity": 0.5,
        "neuron_fvu": [0.1, 0.2],
        "features": feats,
        "heatmap": {
            "features": [f["id"] for f in feats],
            "acts": [[float(i)] * n_feat] * 2,
            "max": float(i),
        },
    }


@pytest.fixture
def demo(tmp_path):
    data = {
        "format": seed.FORMAT,
        "seed": 0,
        "classes": ["class 0", "class 1"],
        "accuracy": 1.0,
        "neurons": {"units": [], "mean_purity": 0.4},
        "inputs": [{"index": 3, "class": 0}, {"index": 7, "class": 1}],
        "default": 1,
        "levels": [level(0, 3), level(1, 2)],
    }
    path = tmp_path / "seed_demos.json"
    path.write_text(json.dumps(data))
    return path


def test_disentangler_has_every_level_without_heatmaps(demo):
    r = client(demo).get("/api/seed/disentangler")
    assert r.status_code == 200
    d = r.json()
    assert [x["l0"] for x in d["levels"]] == [5.0, 4.0] and d["default"] == 1
    assert [len(x["features"]) for x in d["levels"]] == [3, 2]
    assert "heatmap" not in d["levels"][0] and d["levels"][0]["neuron_fvu"] == [0.1, 0.2]


def test_sparsity_per_level(demo):
    c = client(demo)
    d = c.get("/api/seed/sparsity").json()
    assert d["level"] == 1 and len(d["features"]) == 2 and d["acts"] == [[1.0, 1.0]] * 2
    d = c.get("/api/seed/sparsity?level=0").json()
    assert d["level"] == 0 and len(d["features"]) == 3 and d["max"] == 0.0
    assert [x["l1_coef"] for x in d["levels"]] == [1.0, 2.0]
    assert d["inputs"] == [{"index": 3, "class": 0}, {"index": 7, "class": 1}]


@pytest.mark.parametrize("q", ["2", "-1"])
def test_unknown_level_is_404(demo, q):
    r = client(demo).get(f"/api/seed/sparsity?level={q}")
    assert r.status_code == 404 and "levels are 0-1" in r.json()["detail"]


def test_non_numeric_level_is_422(demo):
    assert client(demo).get("/api/seed/sparsity?level=x").status_code == 422


def test_missing_data_says_how_to_make_it(tmp_path):
    for demo in (None, tmp_path / "nothing.json"):
        for route in ("disentangler", "sparsity"):
            r = client(demo).get(f"/api/seed/{route}")
            assert r.status_code == 404
            assert "saescope explore" in r.json()["detail"]


@pytest.mark.parametrize("text", ["{broken", json.dumps({"format": 99, "levels": [1]}), "[]"])
def test_a_foreign_file_is_404(tmp_path, text):
    path = tmp_path / "seed_demos.json"
    path.write_text(text)
    r = client(path).get("/api/seed/disentangler")
    assert r.status_code == 404 and "delete it" in r.json()["detail"]


def test_reread_when_the_file_changes(demo):
    import os

    c = client(demo)
    assert c.get("/api/seed/disentangler").json()["accuracy"] == 1.0
    data = json.loads(demo.read_text())
    data["accuracy"] = 0.5
    demo.write_text(json.dumps(data))
    st = demo.stat()
    os.utime(demo, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert c.get("/api/seed/disentangler").json()["accuracy"] == 0.5

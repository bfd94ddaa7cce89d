"""The API on a real feature index (saescope.analysis over the `glass_sae` run): the routes
return what FeatureIndex says, searches find the features whose examples show the token or
text, and the prompt view's activations are the SAE's own."""

import pytest
from fastapi.testclient import TestClient

from saescope.analysis import FeatureIndex
from saescope.explore import create_app
from tests.explore.common import LOCAL

pytestmark = pytest.mark.slow  # the session's glass_sae run and its index (about 20 s, once)


@pytest.fixture(scope="module")
def client(indexed_glass):
    with TestClient(create_app([indexed_glass]), base_url=LOCAL) as c:
        yield c


@pytest.fixture(scope="module")
def index(indexed_glass):
    idx = FeatureIndex.open(indexed_glass)
    yield idx
    idx.close()


def busy(index) -> dict:
    """The densest feature's page."""
    return index.feature(index.features(limit=1)[0]["feature"])


def test_runs_say_what_the_index_holds(client):
    (run,) = client.get("/api/runs").json()
    info = run["saes"][0]["index"]
    assert (info["d_sae"], info["kind"], info["model"]) == (2048, "lm", "glassllm")
    assert info["tokens"] > 0 and run["saes"][0]["error"] is None


def test_a_feature_is_its_index_page(client, index):
    f = busy(index)
    got = client.get(f"/api/features/{f['id']}").json()
    assert got == {**f, "run": "glass", "sae": "glass"}
    assert got["top"] and got["histogram"]["counts"] and got["logits"]["top"]
    assert client.get("/api/features/2048").status_code == 404
    assert client.get("/api/features/2047").status_code == 200


def test_search_by_token_finds_the_features_peaking_on_it(client, index):
    f = busy(index)
    ex = f["top"][0]
    token = ex["tokens"][ex["at"]]
    got = client.get("/api/search", params={"token": token, "limit": 500}).json()
    assert f["id"] in [r["feature"] for r in got["results"]]
    text = "".join(ex["tokens"][ex["at"] - 2 : ex["at"] + 1])
    got = client.get("/api/search", params={"text": text, "limit": 500}).json()
    assert f["id"] in [r["feature"] for r in got["results"]]
    got = client.get("/api/search", params={"order": "max_act", "limit": 5}).json()["results"]
    assert [r["max_act"] for r in got] == sorted((r["max_act"] for r in got), reverse=True)
    assert client.get("/api/search", params={"order": "nope"}).status_code == 400


def test_the_prompt_views_features_fired_while_indexing_too(client, index):
    out = client.post("/api/prompt", json={"text": "The Queen said to the King", "top": 5})
    assert out.status_code == 200, out.text
    fired = [f for t in out.json()["tokens"] for f in t["features"]]
    assert len(fired) >= 5
    pages = {f["feature"]: client.get(f"/api/features/{f['feature']}").json() for f in fired}
    assert all(page["id"] == i for i, page in pages.items())
    # a feature firing on ordinary text fired on the indexed text too (most do: all here)
    seen = [f for f in fired if pages[f["feature"]]["fired"] > 0]
    assert len(seen) >= 0.8 * len(fired), (len(seen), len(fired))
    for f in seen:  # and no far stronger than its strongest indexed firing
        page = pages[f["feature"]]
        assert page["density"] > 0 and page["top"]
        assert 0 < f["act"] <= 1.5 * page["max_act"], (f, page["max_act"])

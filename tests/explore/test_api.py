"""The JSON API through FastAPI's TestClient: every route, its parameters, and the bad requests
(each a 4xx with a one-line message, the server serving on after them). The feature index is
the stand-in of tests/explore/common.py here; test_index.py runs the routes on a real one."""

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient

from saescope.errors import InputError
from saescope.explore import create_app, state
from tests.explore.browser import served
from tests.explore.common import LOCAL, FakeIndex, random_run

D_SAE = 64


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    one = random_run(root / "glass", D_SAE)
    two = root / "pair"
    random_run(two / "sae_0", D_SAE)
    random_run(two / "sae_1", D_SAE)
    bare = random_run(root / "bare", D_SAE)  # not indexed
    opened = []

    def fake_open(path, sae, several):
        if path.name == "bare":
            raise InputError(f"{path} is not indexed; run saescope index {path}")
        opened.append((path.name, sae, several))
        return FakeIndex(D_SAE)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(state, "open_index", fake_open)
        app = create_app([one, two, bare])
        app.state.opened = opened
        yield app


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url=LOCAL) as c:
        yield c


def error(r, status: int) -> str:
    """The one-line message of a refused request."""
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail
    return detail


def test_runs_lists_each_run_and_sae_with_its_index(client):
    got = {r["name"]: r for r in client.get("/api/runs").json()}
    assert list(got) == ["glass", "pair", "bare"]
    assert [s["name"] for s in got["pair"]["saes"]] == ["sae_0", "sae_1"]
    assert got["glass"]["saes"][0]["index"]["d_sae"] == D_SAE
    assert got["bare"]["saes"][0]["index"] is None
    assert "not indexed" in got["bare"]["saes"][0]["error"]


def test_feature_is_the_index_entry_with_its_run(client, app):
    f = client.get("/api/features/5?run=glass").json()
    assert f == {**FakeIndex(D_SAE).feature(5), "run": "glass", "sae": "glass"}
    assert client.get("/api/features/5").json()["run"] == "glass"  # the first run by default
    g = client.get("/api/features/7?run=pair&sae=sae_1").json()
    assert (g["id"], g["sae"]) == (7, "sae_1")
    assert ("pair", "sae_1", True) in app.state.opened
    assert client.get("/api/features/0").json()["id"] == 0
    assert client.get(f"/api/features/{D_SAE - 1}").json()["id"] == D_SAE - 1


@pytest.mark.parametrize("fid", [str(D_SAE), "-1", "100000"])
def test_an_out_of_range_feature_is_404(client, fid):
    assert f"{D_SAE} features" in error(client.get(f"/api/features/{fid}"), 404)


@pytest.mark.parametrize("fid", ["abc", "1.5", "1e3", "3x", "9" * 40, "%20", "0x10"])
def test_a_non_numeric_feature_id_is_400(client, fid):
    assert "not an integer" in error(client.get(f"/api/features/{fid}"), 400)


def test_unknown_runs_and_saes_are_404_and_several_saes_need_one_named(client):
    assert "no run 'nope'" in error(client.get("/api/features/1?run=nope"), 404)
    assert "pair" in error(client.get("/api/features/1?run=../glass"), 404)
    assert "no SAE 'sae_9'" in error(client.get("/api/features/1?run=pair&sae=sae_9"), 404)
    assert "several SAEs" in error(client.get("/api/features/1?run=pair"), 400)
    assert "not indexed" in error(client.get("/api/features/1?run=bare"), 400)
    assert "no run" in error(client.post("/api/prompt", json={"run": "x", "text": "a"}), 404)


def test_search_by_token_text_and_density(client):
    got = client.get("/api/search", params={"token": " Queen"}).json()
    assert got["by"] == "token" and [r["feature"] for r in got["results"]] == [3, 5]
    assert client.get("/api/search", params={"token": "Queen"}).json()["results"] == []
    got = client.get("/api/search", params={"text": "the Queen", "limit": 2}).json()
    assert got["by"] == "text" and [r["feature"] for r in got["results"]] == [1, 2]
    got = client.get("/api/search", params={"lo": 0.01, "hi": 0.02, "limit": 5}).json()
    dens = [r["density"] for r in got["results"]]
    assert dens == sorted(dens, reverse=True) and all(0.01 <= d <= 0.02 for d in dens)
    got = client.get("/api/search", params={"descending": "false", "limit": 3, "offset": 1})
    assert [r["feature"] for r in got.json()["results"]] == [1, 2, 3]


def test_bad_searches_are_4xx(client):
    assert "not both" in error(client.get("/api/search?token=a&text=b"), 400)
    assert "empty" in error(client.get("/api/search?token="), 400)
    assert "200" in error(client.get("/api/search", params={"text": "x" * 201}), 400)
    assert "finite" in error(client.get("/api/search?lo=nan"), 400)
    assert "finite" in error(client.get("/api/search?hi=inf"), 400)
    assert "limit" in error(client.get("/api/search?limit=0"), 422)
    assert "limit" in error(client.get("/api/search?limit=100000"), 422)
    assert "offset" in error(client.get("/api/search?offset=-1"), 422)
    assert "lo" in error(client.get("/api/search?lo=abc"), 422)


def test_prompt_shows_the_features_on_each_token(client):
    got = client.post("/api/prompt", json={"text": "The Queen said to the King", "top": 3})
    assert got.status_code == 200, got.text
    out = got.json()
    assert "".join(t["token"] for t in out["tokens"]) == "The Queen said to the King"
    assert out["tokens"][0]["skipped"] == "first" and out["tokens"][0]["features"] == []
    fired = [t for t in out["tokens"] if t["features"]]
    assert fired and all(1 <= len(t["features"]) <= 3 for t in fired)
    acts = [f["act"] for t in fired for f in t["features"]]
    assert max(acts) == pytest.approx(out["max"]) and min(acts) > 0
    assert (out["run"], out["sae"]) == ("glass", "glass")


def test_bad_prompts_are_4xx(client):
    assert "empty" in error(client.post("/api/prompt", json={"text": ""}), 400)
    assert "empty" in error(client.post("/api/prompt", json={"text": "   "}), 400)
    long = " the" * 200  # 200 tokens: over glassllm's context of 128
    assert "context" in error(client.post("/api/prompt", json={"text": long}), 400)
    huge = "a" * 30_000
    assert "text" in error(client.post("/api/prompt", json={"text": huge}), 422)
    assert "text" in error(client.post("/api/prompt", json={}), 422)
    assert "top" in error(client.post("/api/prompt", json={"text": "a b", "top": 0}), 422)
    assert "Extra" in error(client.post("/api/prompt", json={"text": "a", "path": "/x"}), 422)
    assert error(client.post("/api/prompt", content=b"{not json"), 422)
    big = json.dumps({"text": "a" * (2 << 20)})
    assert "body" in error(client.post("/api/prompt", content=big), 413)


def test_steer_continues_with_and_without_the_edits(client):
    r = client.post("/api/steer", json={"prompt": "The King said", "max_new_tokens": 6})
    plain = r.json()
    assert r.status_code == 200 and plain["steered"] == plain["unsteered"] and plain["unsteered"]
    body = {"prompt": "The King said", "features": [{"id": 3, "value": 200}], "max_new_tokens": 6}
    out = client.post("/api/steer", json=body).json()
    assert out["unsteered"] == plain["unsteered"] and out["steered"] != out["unsteered"]
    assert [f["id"] for f in out["features"]] == [3] and out["features"][0]["top_tokens"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_non_finite_steering_value_is_422(client, value):
    raw = '{"prompt": "The King", "features": [{"id": 1, "value": VALUE}]}'.replace("VALUE", value)
    r = client.post("/api/steer", content=raw, headers={"content-type": "application/json"})
    assert "finite" in error(r, 422)


def test_bad_steering_requests_are_4xx(client):
    def steer(**kw):
        return client.post("/api/steer", json={"prompt": "The King", **kw})

    assert "out of range" in error(steer(features=[{"id": D_SAE, "value": 1}]), 400)
    assert "features.0.id" in error(steer(features=[{"id": -1, "value": 1}]), 422)
    assert "features.0.id" in error(steer(features=[{"id": "abc", "value": 1}]), 422)
    assert "mode" in error(steer(mode="explode"), 400)
    assert "max_new_tokens" in error(steer(max_new_tokens=10_000), 422)
    assert "features" in error(steer(features=[{"id": 1, "value": 1}] * 17), 422)
    assert "prompt" in error(client.post("/api/steer", json={"prompt": ""}), 422)
    long = {"prompt": " the" * 200}
    assert "context" in error(client.post("/api/steer", json=long), 400)
    assert "temperature" in error(steer(temperature=-1), 422)


def test_the_server_keeps_serving_after_bad_requests(client):
    for _ in range(3):
        client.get("/api/features/abc")
        client.post("/api/steer", content='{"prompt": "a", "features": [{"id": 1, "value": NaN}]}')
    assert client.get("/api/runs").status_code == 200
    assert client.get("/api/features/2").json()["id"] == 2


def test_concurrent_model_calls_give_what_each_alone_gives(app):
    texts = [f"The Queen said {w}" for w in ["yes", "no", "to the King", "nothing", "it"]] * 3
    with TestClient(app, base_url=LOCAL) as c:
        alone = [c.post("/api/prompt", json={"text": t}).json() for t in texts[:5]]
        steer = c.post("/api/steer", json={"prompt": "The King", "max_new_tokens": 4}).json()
    with served(app) as url, httpx.Client(base_url=url, timeout=60) as http:

        def call(i: int) -> dict:
            if i % 4 == 3:
                return http.post("/api/steer", json={"prompt": "The King", "max_new_tokens": 4})
            return http.post("/api/prompt", json={"text": texts[i]})

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(call, range(len(texts))))
    for i, r in enumerate(got):
        assert r.status_code == 200, r.text
        assert r.json() == (steer if i % 4 == 3 else alone[i % 5])


def test_a_bug_is_a_json_500_and_the_server_serves_on(app):
    idx = app.state.runs["glass"].index(None)

    def broken(i):
        raise RuntimeError("the index broke\nsecond line")

    with (
        pytest.MonkeyPatch.context() as mp,
        TestClient(app, base_url=LOCAL, raise_server_exceptions=False) as c,
    ):
        mp.setattr(idx, "feature", broken)
        r = c.get("/api/features/1")
        assert r.status_code == 500
        assert r.json() == {"detail": "internal error: RuntimeError: the index broke"}
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/api/features/1").status_code == 200

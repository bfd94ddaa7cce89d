"""POST /api/heatmap (the Sparsity Explorer's language-model heatmap) through FastAPI's
TestClient: the matrix is steer.tokens.activation_matrix's on the run's model; bad requests are
a 4xx with one line and the server serves on."""

import pytest
import torch
from fastapi.testclient import TestClient

from saescope.explore import create_app
from saescope.models import load_model
from saescope.runs import Run
from saescope.saes import make_sae
from saescope.steer.tokens import activation_matrix
from tests.explore.common import LOCAL, random_run
from tests.explore.test_api import error

TEXT = "The Queen said to the King"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("heatmap")
    glass = random_run(root / "glass")
    torch.manual_seed(0)
    make_sae({"architecture": "topk", "d_in": 8, "d_sae": 16, "k": 2}).save(root / "plain", {})
    with TestClient(create_app([glass, root / "plain"]), base_url=LOCAL) as c:
        yield c


def test_the_heatmap_is_the_matrix_of_the_runs_sae(client, tmp_path):
    got = client.post("/api/heatmap", json={"text": TEXT, "columns": 6})
    assert got.status_code == 200, got.text
    got = got.json()
    assert (got["run"], got["sae"]) == ("glass", "glass")
    run = Run.open(random_run(tmp_path / "again"))  # the same seed: the same SAE
    model, tok = load_model("glassllm")
    _, sae = run.sae()
    want = activation_matrix(sae.eval(), model, tok, "layers.2", TEXT, 6, run.outlier_rule)
    assert [c["feature"] for c in got["features"]] == [c["feature"] for c in want["features"]]
    assert len(got["features"]) == 6 and len(got["acts"]) == len(got["tokens"]) > 3
    assert torch.allclose(torch.tensor(got["acts"]), torch.tensor(want["acts"]), atol=1e-5)
    assert got["max"] > 0 and got["max"] == max(max(r) for r in got["acts"])


def test_bad_heatmap_requests_are_4xx_and_the_server_serves_on(client):
    def post(**body):
        return client.post("/api/heatmap", json=body)

    assert "empty" in error(post(text=""), 400)
    assert "context" in error(post(text=" the" * 500), 400)
    assert "text" in error(post(text="x" * 20_001), 422)
    assert "text" in error(post(), 422)
    assert "columns" in error(post(text=TEXT, columns=0), 422)
    assert "columns" in error(post(text=TEXT, columns=10_000), 422)
    assert "columns" in error(post(text=TEXT, columns="many"), 422)
    assert "Extra" in error(post(text=TEXT, path="../../etc/passwd"), 422)
    assert "no run" in error(post(text=TEXT, run="../glass"), 404)
    assert "no SAE" in error(post(text=TEXT, sae="x"), 404)
    assert "model's activations" in error(post(text=TEXT, run="plain"), 400)
    assert error(client.post("/api/heatmap", content=b"{not json"), 422)
    assert "body" in error(client.post("/api/heatmap", content=b"x" * (2 << 20)), 413)
    assert post(text=TEXT).status_code == 200

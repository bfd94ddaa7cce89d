"""Every command that reads an SAE takes a peer library's SAE folder (SAELens): eval (CE loss
recovered included), steer, features, index, explore (its /api/runs and a model route) and
export, with the model and hook point from the folder's metadata or from --model/--hook; a
model saescope does not have, or none named, is a one-line error."""

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from saescope.analysis import FeatureIndex
from saescope.cli import build_parser, main
from saescope.errors import ConfigError
from saescope.explore import create_app
from saescope.saes import make_sae
from tests.cli.common import one_line_error
from tests.explore.common import LOCAL
from tests.runs.common import saelens_folder
from tests.runs.test_peer import sparsify_run

COMMANDS = ["eval", "steer", "features", "index", "explore", "export"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A SAELens folder of a random TopK SAE on glassllm's layers.2 that says so, and the same
    SAE in one that says it belongs to gpt2 (saescope has no such model) and names no hook."""
    tmp = tmp_path_factory.mktemp("peers")
    torch.manual_seed(0)
    sae = make_sae({"architecture": "topk", "d_in": 128, "d_sae": 256, "k": 8})
    glass = saelens_folder(sae, tmp / "glass", model_name="glassllm", hook_name="layers.2")
    return glass, saelens_folder(sae, tmp / "gpt2", model_name="gpt2")


def cli_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_takes_model_and_hook(command):
    extra = {"steer": ["--prompt", "p"], "export": ["--features", "1"]}.get(command, [])
    ns = build_parser().parse_args([command, "RUN", "--model", "m", "--hook", "h", *extra])
    assert (ns.model, ns.hook) == ("m", "h")


def test_eval_on_a_file_needs_no_model(capsys, folders, tmp_path):
    """--data FILE: a peer SAE of a model saescope does not have (gpt2), or whose hook point
    the model lacks, is evaluated on the file's activations; no model is loaded."""
    glass, gpt2 = folders
    torch.manual_seed(1)
    acts = tmp_path / "acts.npy"
    np.save(acts, torch.randn(300, 128).numpy())
    got = cli_json(capsys, ["eval", str(gpt2), "--data", str(acts), "--json"])
    assert got["n_tokens"] == 300 and got["l0"] == pytest.approx(8)
    assert cli_json(capsys, ["eval", str(glass), "--data", str(acts), "--json"]) == got


@pytest.mark.slow
def test_eval_steer_and_features_on_a_saelens_folder(capsys, folders):
    glass, gpt2 = folders
    got = cli_json(capsys, ["eval", str(glass), "--tokens", "512", "--json"])
    assert 0 < got["ce_loss_recovered"] < 1 and got["l0"] == pytest.approx(8)
    given = ["--model", "glassllm", "--hook", "layers.2"]
    again = cli_json(capsys, ["eval", str(gpt2), "--tokens", "512", "--json", *given])
    assert again.pop("density_plot").endswith("gpt2/feature_density.png")
    assert again == {k: v for k, v in got.items() if k != "density_plot"}
    argv = ["steer", str(glass), "--feature", "3=20", "--prompt", "Alice was", "--json"]
    out = cli_json(capsys, [*argv, "--max-new-tokens", "3"])
    assert out["features"][0]["id"] == 3 and out["unsteered"] and out["steered"]
    out = cli_json(capsys, ["features", str(glass), "--tokens", "512", "--top", "3", "--json"])
    assert len(out["features"]) == 3 and out["hook"] == "layers.2"


@pytest.mark.slow
def test_index_then_explore_a_saelens_folder(capsys, folders, tmp_path):
    glass, gpt2 = folders
    assert main(["index", str(glass), "--tokens", "1024", "--no-progress"]) == 0
    assert "indexed 256 features of glass" in capsys.readouterr().out
    with FeatureIndex.open(glass) as idx:
        assert (idx.info["model"], idx.info["hook"]) == ("glassllm", "layers.2")
    with pytest.raises(ConfigError, match=r"model 'gpt2'.*give --model"):
        create_app([gpt2])
    app = create_app([glass, gpt2], model="glassllm", hook="layers.2")
    with TestClient(app, base_url=LOCAL) as client:
        runs = {r["name"]: r for r in client.get("/api/runs").json()}
        got = client.post("/api/prompt", json={"run": "gpt2", "text": "Alice was"})
    assert runs["glass"]["saes"][0]["index"]["d_sae"] == 256
    assert "not indexed" in runs["gpt2"]["saes"][0]["error"]
    assert got.status_code == 200 and got.json()["run"] == "gpt2"
    assert (
        main(["export", str(glass), "--features", "1,2", "--html", str(tmp_path / "f.html")]) == 0
    )
    assert "2 features" in capsys.readouterr().out and (tmp_path / "f.html").is_file()


@pytest.mark.slow
def test_each_hook_point_of_a_sparsify_run_has_its_own_index(capsys, tmp_path):
    """Indexing both hook points of one run folder keeps both indexes, and explore and export
    with --hook show the one it names (they shared the run folder's index.sqlite)."""
    root = sparsify_run(tmp_path / "run")
    for hook in ("layers.1", "layers.2"):
        argv = ["index", str(root), "--hook", hook, "--tokens", "300", "--no-progress"]
        assert main(argv) == 0
    capsys.readouterr()
    for hook in ("layers.1", "layers.2"):
        with TestClient(create_app([root], hook=hook), base_url=LOCAL) as client:
            (run,) = client.get("/api/runs").json()
        assert run["saes"][0]["index"]["hook"] == hook
        html = tmp_path / f"{hook}.html"
        argv = ["export", str(root), "--hook", hook, "--features", "1", "--html", str(html)]
        assert main(argv) == 0


@pytest.mark.parametrize("command", COMMANDS)
def test_a_model_saescope_does_not_have_is_one_line(capsys, folders, command):
    extra = {"steer": ["--prompt", "Alice"], "explore": ["--no-demo"]}.get(command, [])
    extra += ["--features", "1", "--html", "x.html"] if command == "export" else []
    argv = [command, str(folders[1]), *extra]
    err = one_line_error(capsys, argv)
    assert "says it belongs to model 'gpt2'" in err and "give --model" in err


def test_a_folder_naming_no_hook_is_one_line(capsys, folders):
    err = one_line_error(capsys, ["features", str(folders[1]), "--model", "glassllm"])
    assert "does not say which hook point it reads; give --hook" in err


@pytest.mark.parametrize("command", ["eval", "steer", "index"])
def test_device_cuda_without_cuda_is_one_line_before_anything_loads(command, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda is valid here")
    extra = ["--prompt", "Alice"] if command == "steer" else []
    err = one_line_error(capsys, [command, str(tmp_path), *extra, "--device", "cuda"])
    assert "'cuda' is not available" in err and "--device cpu" in err

"""A peer library's SAE folder (SAELens) opened as a run: the model, hook point, transcoder
target and context its metadata names, or `model`/`hook` given (which win); a model saescope
does not have, or no model or hook at all, is a one-line error; its evaluation is the same
SAE's as a saescope run."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from saescope import interop
from saescope.errors import ConfigError
from saescope.runs import DataSpec, Run, peer_format, sae_folders
from saescope.saes import make_sae
from saescope.training import TrainConfig
from tests.runs.common import saelens_folder

GLASS = {"model_name": "glassllm", "hook_name": "layers.2"}


def topk(d_in=128, seed=0):
    torch.manual_seed(seed)
    return make_sae({"architecture": "topk", "d_in": d_in, "d_sae": 256, "k": 8})


def test_a_saelens_folder_opens_as_a_run_of_the_model_it_names(tmp_path):
    sae = topk()
    path = saelens_folder(sae, tmp_path / "peer", **GLASS, context_size=64)
    assert peer_format(path) == "saelens" and sae_folders(path) == [path]
    run = Run.open(path)
    assert (run.format, run.train, run.outliers) == ("saelens", None, None)
    assert run.data == DataSpec("model", model="glassllm", hook="layers.2", context=64)
    assert run.metadata["saelens_architecture"] == "topk"
    x = torch.randn(7, 128)
    torch.testing.assert_close(run.sae()[1].encode(x), sae.encode(x))


def test_a_folder_converted_to_saescopes_format_keeps_its_model_and_hook(tmp_path):
    peer = saelens_folder(topk(), tmp_path / "peer", **GLASS, context_size=64)
    path = interop.convert(peer, tmp_path / "converted", "saescope")
    assert peer_format(path) is None  # saescope's own folder now, with no recorded data
    run = Run.open(path)
    assert run.data == DataSpec("model", model="glassllm", hook="layers.2", context=64)


def test_given_model_and_hook_override_the_metadata_and_context_defaults(tmp_path):
    path = saelens_folder(topk(), tmp_path / "peer", **GLASS)
    run = Run.open(path, model="glassllm", hook="layers.1")
    assert (run.data.model, run.data.hook, run.data.context) == ("glassllm", "layers.1", 128)


def test_a_transcoders_output_hook_is_the_target(tmp_path):
    torch.manual_seed(0)
    tc = make_sae(
        {"architecture": "relu", "d_in": 128, "d_out": 128, "d_sae": 64,
         "apply_b_dec_to_input": False}
    )  # fmt: skip
    meta = {**GLASS, "hook_name": "layers.1.mlp:in", "hook_name_out": "layers.1.mlp"}
    run = Run.open(saelens_folder(tc, tmp_path / "tc", **meta))
    assert (run.data.hook, run.data.target) == ("layers.1.mlp:in", "layers.1.mlp")
    assert Run.open(tmp_path / "tc", target="layers.2.mlp").data.target == "layers.2.mlp"


def test_a_model_saescope_does_not_have_needs_model(tmp_path):
    path = saelens_folder(topk(768), tmp_path / "gpt2", model_name="gpt2", hook_name="layers.2")
    with pytest.raises(
        ConfigError, match=r"model 'gpt2', which saescope does not have; give --model"
    ) as e:
        Run.open(path)
    assert "\n" not in str(e.value) and "glassllm" in str(e.value)
    assert Run.open(path, model="glassllm").data.model == "glassllm"


def test_without_need_data_a_model_saescope_lacks_leaves_data_none(tmp_path):
    """Evaluating on a file needs no model: need_data=False opens the folder (a peer's or one
    converted from it) with data None rather than the error, and loads no model."""
    path = saelens_folder(topk(768), tmp_path / "gpt2", model_name="gpt2", hook_name="layers.2")
    converted = interop.convert(path, tmp_path / "converted", "saescope")
    for folder in (path, converted):
        run = Run.open(folder, need_data=False)
        assert run.data is None and run.sae()[1].cfg.d_in == 768
    acts = tmp_path / "acts.safetensors"
    save_file({"x": torch.randn(64, 768)}, acts)
    got = run.evaluate(64, DataSpec.at(acts), plot=False)[converted.name]
    assert got["n_tokens"] == 64


def test_a_hook_the_model_lacks_needs_hook_and_a_long_context_is_cut(tmp_path):
    """SAELens names hooks as TransformerLens does; a context over the model's is cut to it."""
    meta = {**GLASS, "hook_name": "blocks.2.hook_resid_post", "context_size": 1024}
    path = saelens_folder(topk(), tmp_path / "peer", **meta)
    with pytest.raises(ConfigError, match=r"hook point 'blocks.2.hook_resid_post', which glassllm"):
        Run.open(path)
    assert Run.open(path, hook="layers.2").data.context == 128  # glassllm's positions


@pytest.mark.parametrize("missing", ["model_name", "hook_name"])
def test_a_folder_that_does_not_say_needs_model_or_hook(tmp_path, missing):
    meta = {k: v for k, v in GLASS.items() if k != missing}
    path = saelens_folder(topk(), tmp_path / "peer", **meta)
    flag = {"model_name": "--model", "hook_name": "--hook"}[missing]
    with pytest.raises(ConfigError, match=f"does not say which .*; give {flag}"):
        Run.open(path)
    given = {"model_name": {"model": "glassllm"}, "hook_name": {"hook": "layers.2"}}[missing]
    assert Run.open(path, **given).data.hook == "layers.2"


def test_a_saescope_run_keeps_its_data_and_takes_model_only_when_it_records_none(tmp_path):
    spec = DataSpec("model", model="glassllm", hook="layers.2", context=128)
    sae = topk()
    recorded = Run.open(sae.save(tmp_path / "run", {"data": spec.to_dict()}), model="minilm")
    assert recorded.data == spec and recorded.format == "saescope"
    bare = Run.open(sae.save(tmp_path / "bare"), model="glassllm", hook="layers.1")
    assert bare.data == dataclasses.replace(spec, hook="layers.1")
    assert Run.open(tmp_path / "bare").data is None


def test_a_bare_sparsify_coder_opens_with_the_model_and_hook_given(tmp_path):
    """A SparseCoder folder on its own names no hook point: --model and --hook supply it."""
    path = interop.save(topk(), tmp_path / "coder", format="sparsify")
    with pytest.raises(ConfigError, match="give --model"):
        Run.open(path)
    run = Run.open(path, model="glassllm", hook="layers.1")
    assert (run.format, run.data.model, run.data.hook) == ("sparsify", "glassllm", "layers.1")


def sparsify_run(root):
    """A sparsify training run's folder: one SparseCoder per hook point, config.json."""
    for seed, hook in enumerate(["layers.1", "layers.2"]):
        interop.save(topk(seed=seed), root / hook, format="sparsify")
    run_cfg = {"hookpoints": ["layers.1", "layers.2"], "model": "glassllm", "ctx_len": 32}
    (root / "config.json").write_text(json.dumps(run_cfg))
    return root


def test_each_sae_of_a_peer_run_folder_has_its_own_folder(tmp_path):
    """What saescope writes for an SAE (its index, its density plot) goes to the folder of
    the SAE `hook` picks, not to the run folder the hook points share."""
    root = sparsify_run(tmp_path / "run")
    runs = [Run.open(root, hook=h) for h in ("layers.1", "layers.2")]
    assert [r.path for r in runs] == [root / "layers.1", root / "layers.2"]
    assert [list(r.dirs.values()) for r in runs] == [[root / "layers.1"], [root / "layers.2"]]
    assert runs[1].data.hook == "layers.2" and runs[1].data.model == "glassllm"


@pytest.mark.slow
def test_its_evaluation_is_the_same_saes_as_a_saescope_run(tmp_path):
    """Every metric, CE loss recovered included, equals that of the same SAE saved by saescope
    with the same data and every token kept (the peers train on every token)."""
    sae = topk()
    peer = Run.open(saelens_folder(sae, tmp_path / "peer", **GLASS, context_size=128))
    spec = DataSpec("model", model="glassllm", hook="layers.2", context=128)
    every = dataclasses.asdict(TrainConfig(outlier_factor=None))
    own = Run.open(sae.save(tmp_path / "own", {"data": spec.to_dict(), "training": every}))
    got = peer.evaluate(512, plot=False)["peer"]
    assert 0 < got["ce_loss_recovered"] < 1 and "outliers" not in got
    assert got == own.evaluate(512, plot=False)["own"]

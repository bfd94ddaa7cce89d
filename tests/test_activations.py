"""`saescope.activations`: the held-out split, text to contexts, on-the-fly model batches and
the resumable harvest into a cache. A toy model whose activations are the token ids and
positions makes each row say which context it came from."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from saescope.activations import (
    HELD_OUT_EVERY,
    ModelBatches,
    harvest_to_cache,
    split,
    text_contexts,
)
from saescope.data.cache import MANIFEST, ActivationCache
from saescope.data.corpus import fingerprint
from saescope.errors import ConfigError, InputError
from saescope.models import load_model


class _Ids(nn.Module):
    """ids (B, T) -> (B, T, 2): each token's id and position, as floats."""

    def forward(self, ids):
        pos = torch.arange(ids.shape[1]).expand_as(ids)
        return torch.stack((ids.float(), pos.float()), -1)


class Toy(nn.Module):
    """`embed` gives (id, position); `proj` maps it to 3 dimensions (a transcoder's target)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = _Ids()
        self.proj = nn.Linear(2, 3)

    def forward(self, ids):
        return self.proj(self.embed(ids))


class CharTokenizer:
    def encode(self, text):
        return [ord(c) % 97 for c in text]


def _contexts(n: int, t: int = 5) -> torch.Tensor:
    return torch.arange(n * t).view(n, t)  # context c holds ids c*t .. c*t + t-1


# ----- split -----------------------------------------------------------------------------------


def test_split_holds_out_every_twentieth_context_in_order():
    ctx = _contexts(45, 2)
    train, test = split(ctx, "train"), split(ctx, "test")
    assert HELD_OUT_EVERY == 20
    assert test[:, 0].tolist() == [19 * 2, 39 * 2]
    held = {19, 39}
    assert train[:, 0].tolist() == [2 * i for i in range(45) if i not in held]  # order kept
    assert torch.equal(torch.cat([train, test]).sort(0).values, ctx)  # a partition


def test_split_needs_a_held_out_context_and_a_valid_part():
    assert split(_contexts(20), "test").shape == (1, 5)  # the 20th context is the first held out
    with pytest.raises(InputError, match="19 contexts, too few for a test split"):
        split(_contexts(19), "test")
    assert split(_contexts(1), "train").shape == (1, 5)
    with pytest.raises(InputError, match="too few for a train split"):
        split(_contexts(0), "train")
    with pytest.raises(ConfigError, match="part must be 'train' or 'test', got 'val'"):
        split(_contexts(40), "val")


# ----- text_contexts -----------------------------------------------------------------------------


def test_text_contexts_pack_the_token_ids_and_fingerprint_them(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("abcdefghij" * 3)
    b.write_text("KLMNOPQ")
    tok = CharTokenizer()
    ctx, fp = text_contexts(Toy(), tok, [a, b], 8)
    ids = tok.encode(a.read_text()) + tok.encode(b.read_text())  # 37 tokens: 4 contexts
    assert torch.equal(ctx, torch.tensor(ids[:32]).view(4, 8))
    assert fp == fingerprint(ids)
    assert text_contexts(Toy(), tok, [a, b], 8)[1] == fp  # stable
    assert text_contexts(Toy(), tok, [a, b], 4)[1] == fp  # the text's, not the packing's
    assert text_contexts(Toy(), tok, [b, a], 8)[1] != fp  # order is part of the text
    b.write_text("KLMNOPq")
    assert text_contexts(Toy(), tok, [a, b], 8)[1] != fp


def test_text_contexts_refuse_contexts_the_model_cannot_take(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("Alice " * 200)
    model, tok = load_model("glassllm")
    ctx, _ = text_contexts(model, tok, [text], 128)  # the limit itself is fine
    assert ctx.shape[1] == 128
    with pytest.raises(ConfigError, match="--context 129 is longer than the model's 128"):
        text_contexts(model, tok, [text], 129)
    with pytest.raises(ConfigError, match="--context must be >= 2 tokens, got 1"):
        text_contexts(model, tok, [text], 1)
    # a model that states no limit takes any context
    long, _ = text_contexts(Toy(), CharTokenizer(), [text], 1000)
    assert long.shape == (1, 1000)
    with pytest.raises(InputError, match="fewer than one context of 5000"):
        text_contexts(Toy(), CharTokenizer(), [text], 5000)


# ----- ModelBatches ------------------------------------------------------------------------------


def test_model_batches_say_what_they_give():
    ctx = _contexts(10)
    mb = ModelBatches(Toy(), ctx, "embed", batch_size=9, seed=0)
    assert (mb.d_in, mb.d_out, mb.y_is_x) == (2, 2, True)
    assert mb.contexts_per_batch == 2 and mb.tokens_per_batch == 8 and mb.per_epoch == 5
    x, y = mb.batch(0)
    assert x.shape == (8, 2) and y is x
    assert set(x[:, 1].tolist()) == {1.0, 2.0, 3.0, 4.0}  # position 0 dropped
    tc = ModelBatches(Toy(), ctx, "proj:in", "proj", batch_size=100)
    assert (tc.d_in, tc.d_out, tc.y_is_x) == (2, 3, False)
    assert tc.contexts_per_batch == 10 and tc.tokens_per_batch == 40  # at most every context
    x, y = tc.batch(3)
    torch.testing.assert_close(tc.model.proj(x), y)
    small = ModelBatches(Toy(), ctx, "embed", batch_size=1)
    assert small.contexts_per_batch == 1 and small.tokens_per_batch == 4


def test_model_batch_i_is_a_function_of_seed_and_i():
    ctx = _contexts(12)
    a = ModelBatches(Toy(), ctx, "embed", batch_size=8, seed=4)
    b = ModelBatches(Toy(), ctx, "embed", batch_size=8, seed=4)
    order = [7, 0, 13, 2]
    got = {i: b.batch(i)[0] for i in order}  # asked for in another order
    for i in sorted(order):
        assert torch.equal(a.batch(i)[0], got[i])
    other = ModelBatches(Toy(), ctx, "embed", batch_size=8, seed=5)
    assert any(not torch.equal(other.batch(i)[0], a.batch(i)[0]) for i in range(3))
    it = a.iter_from(5)
    assert torch.equal(next(it)[0], a.batch(5)[0]) and torch.equal(next(it)[0], a.batch(6)[0])


def _contexts_of(x: torch.Tensor, t: int = 5) -> list[int]:
    """The context index of each context in a batch of the toy's rows (t - 1 rows each)."""
    return [int(v) // t for v in x[:: t - 1, 0]]


def _epoch(mb: ModelBatches, first: int, n: int) -> list[int]:
    """The contexts of batches first .. first + n - 1, in order."""
    return [c for i in range(first, first + n) for c in _contexts_of(mb.batch(i)[0])]


def test_each_epoch_is_a_permutation_of_the_contexts():
    ctx = _contexts(12)
    mb = ModelBatches(Toy(), ctx, "embed", batch_size=12, seed=1)  # 3 contexts a batch
    assert mb.per_epoch == 4
    epochs = [_epoch(mb, e * 4, 4) for e in range(3)]
    for seen in epochs:
        assert sorted(seen) == list(range(12))  # every context exactly once
    assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != list(range(12))
    # each batch holds whole contexts, rows in position order
    x, _ = mb.batch(5)
    assert x[:, 1].tolist() == [1.0, 2.0, 3.0, 4.0] * 3


def test_an_epoch_drops_the_contexts_that_do_not_fill_a_batch():
    mb = ModelBatches(Toy(), _contexts(11), "embed", batch_size=12, seed=2)
    assert mb.per_epoch == 3
    seen = _epoch(mb, 0, 3)
    assert len(seen) == len(set(seen)) == 9
    nxt = _epoch(mb, 3, 3)
    assert len(set(nxt)) == 9 and nxt != seen


# ----- harvest_to_cache --------------------------------------------------------------------------


def _shards(path):
    cache = ActivationCache(path)
    return [load_file(path / s["file"]) for s in cache.shards]


def _same(a, b):
    assert len(a) == len(b)
    for ta, tb in zip(a, b, strict=True):
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_harvest_to_cache_writes_the_contexts_with_their_source(tmp_path):
    model, ctx = Toy(), _contexts(10)
    w = harvest_to_cache(model, ctx, ["embed", "proj"], tmp_path / "c", {"m": "toy"}, 2, 4, False)
    assert w.contexts_done == 10 and w.rows == 40
    manifest = json.loads((tmp_path / "c" / MANIFEST).read_text())
    assert manifest["source"] == {"m": "toy", "hooks": ["embed", "proj"]}
    assert [s["n_contexts"] for s in manifest["shards"]] == [4, 4, 2]
    cache = ActivationCache(tmp_path / "c")
    assert cache.hooks == {"embed": 2, "proj": 3}
    assert torch.equal(cache.head("contexts", 40), torch.arange(10).repeat_interleave(4))
    torch.testing.assert_close(cache.head("embed", 40)[:, 0], ctx[:, 1:].reshape(-1).float())


def test_harvest_to_cache_twice_changes_nothing(tmp_path):
    model, ctx = Toy(), _contexts(10)
    out = tmp_path / "c"
    harvest_to_cache(model, ctx, ["embed"], out, {"m": "toy"}, 2, 4, False)
    before = _shards(out)
    manifest = (out / MANIFEST).read_bytes()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    w = harvest_to_cache(model, ctx, ["embed"], out, {"m": "toy"}, 2, 4, False)
    assert w.contexts_done == 10
    assert (out / MANIFEST).read_bytes() == manifest
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # nothing rewritten
    _same(_shards(out), before)


def test_harvest_to_cache_resumes_and_grows_to_what_one_pass_gives(tmp_path):
    model, ctx = Toy(), _contexts(14)
    one = tmp_path / "one"
    harvest_to_cache(model, ctx, ["embed", "proj"], one, {"m": "toy"}, 2, 4, False)
    grown = tmp_path / "grown"
    for n in (4, 6, 14):  # a whole shard, then a partial one, then the rest
        harvest_to_cache(model, ctx[:n], ["embed", "proj"], grown, {"m": "toy"}, 2, 4, False)
    a, b = ActivationCache(one), ActivationCache(grown)
    assert a.n_rows == b.n_rows == 14 * 4
    for name in ("embed", "proj", "tokens", "positions", "contexts"):
        assert torch.equal(a.head(name, 10**6), b.head(name, 10**6)), name


def test_model_batches_are_whole_training_contexts(glass, tmp_path):
    model, tok = glass
    (tmp_path / "t.txt").write_text("Alice was beginning to get very tired of sitting. " * 120)
    contexts, _ = text_contexts(model, tok, [tmp_path / "t.txt"], 32)
    mb = ModelBatches(model, contexts, "layers.2", batch_size=100, seed=1)
    assert mb.contexts_per_batch == 3 and mb.d_in == 128
    x, y = mb.batch(1)
    assert x.shape == (93, 128) and y is x
    torch.testing.assert_close(mb.batch(1)[0], x)

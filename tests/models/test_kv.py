"""The key/value cache: a forward pass with it equals the plain forward on the whole sequence
(glassllm and a tiny random Llama), prefill then single tokens and several tokens after an
offset; `length` is the position of the new tokens before a pass; an aborted pass leaves
nothing behind; too many positions are refused."""

import copy
from itertools import pairwise

import pytest
import torch

from saescope.errors import ConfigError, InputError
from saescope.models.hooks import attached
from saescope.models.kv import KVCache, causal_mask
from saescope.models.llama import Llama

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 32,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 48,
    "num_hidden_layers": 3,
    "vocab_size": 97,
    "max_position_embeddings": 40,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
}


def tiny_llama(tie: bool = False) -> Llama:
    """The Llama port at a tiny random config (its weights start uninitialised)."""
    model = Llama({**TINY_LLAMA, "tie_word_embeddings": tie})
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.fixture(params=["glassllm", "llama", "llama-tied"])
def lm(request, glass):
    if request.param == "glassllm":
        return glass[0]
    return tiny_llama(tie=request.param == "llama-tied")


def _vocab(model) -> int:
    return model.embed.num_embeddings if hasattr(model, "embed") else TINY_LLAMA["vocab_size"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cached_passes_equal_the_whole_forward(lm, dtype):
    lm = copy.deepcopy(lm).to(dtype)  # glassllm's shared fixture stays as it is
    ids = torch.randint(0, _vocab(lm), (2, 30))
    cache = lm.new_cache()
    seen = []  # cache.length as a pre-hook on the root model reads it
    handle = lm.register_forward_pre_hook(lambda _m, _a: seen.append(cache.length))
    # prefill 10, then one at a time to 16, then 6 at once after the offset, then 8 at once
    cuts = [0, 10, 11, 12, 13, 14, 15, 16, 22, 30]
    try:
        with torch.no_grad():
            whole = lm(ids)
            parts = [lm(ids[:, a:b], cache=cache) for a, b in pairwise(cuts)]
    finally:
        handle.remove()
    assert seen == [0, *cuts[:-1]]  # the whole pass, then where each part starts
    assert cache.length == 30
    got = torch.cat(parts, dim=1)
    assert got.shape == whole.shape == (2, 30, _vocab(lm))
    # float32: logits up to ~20 differ by a few units in the last place (up to 1.1e-5 seen
    # on glassllm: other matrix shapes sum in another order); float64: the same maths exactly
    tol = {"atol": 1e-5, "rtol": 1e-6} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 0}
    torch.testing.assert_close(got, whole, **tol)
    # the cache changes the result: the same token without it sits at position 0
    with torch.no_grad():
        alone = lm(ids[:, 15:16])
    assert (alone[:, 0] - whole[:, 15]).abs().max() > 1e-3


def test_block_hooks_see_only_the_new_positions(glass):
    model, _ = glass
    ids = torch.randint(0, 1024, (3, 12))
    shapes = []
    cache = model.new_cache()
    with attached(model, {"layers.1": lambda x, _c: shapes.append(tuple(x.shape))}):
        with torch.no_grad():
            model(ids[:, :8], cache=cache)
            model(ids[:, 8:9], cache=cache)
            model(ids[:, 9:], cache=cache)
    assert shapes == [(3, 8, 128), (3, 1, 128), (3, 3, 128)]


def test_an_aborted_pass_leaves_the_cache_as_it_was(glass):
    model, _ = glass
    ids = torch.randint(0, 1024, (1, 9))
    cache = model.new_cache()

    def boom(_x, _c):
        raise RuntimeError("stop")

    with torch.no_grad():
        whole = model(ids)
        model(ids[:, :6], cache=cache)
        with attached(model, {"layers.2": boom}), pytest.raises(RuntimeError, match="stop"):
            model(ids[:, 6:8], cache=cache)  # layers 0-2 appended, then the pass stopped
        assert cache.length == 6
        rest = model(ids[:, 6:], cache=cache)
    assert (rest - whole[:, 6:]).abs().max() <= 1e-5


def test_the_mask_lets_each_new_query_see_the_cache_and_the_new_ones_before_it():
    mask = causal_mask(3, 2, torch.device("cpu"))
    want = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, want)
    assert causal_mask(1, 5, torch.device("cpu")) is None  # one token sees everything


def test_update_appends_and_returns_every_position():
    cache = KVCache(2)
    k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    assert cache.update(0, k, v)[0] is k
    cache.update(1, k, v)
    cache.advance(3)
    k2, v2 = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4)
    all_k, all_v = cache.update(0, k2, v2)
    assert torch.equal(all_k, torch.cat((k, k2), dim=2))
    assert torch.equal(all_v, torch.cat((v, v2), dim=2))
    assert cache.length == 3  # until the pass has run through every layer
    with pytest.raises(InputError, match="the cache holds 1 rows, the pass has 2"):
        cache.update(1, torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4))


def test_too_many_positions_are_refused(glass):
    model, _ = glass
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.zeros(1, 120, dtype=torch.long), cache=cache)
        with pytest.raises(
            InputError, match=r"at most 128 positions, got \(1, 9\) after 120 cached"
        ):
            model(torch.zeros(1, 9, dtype=torch.long), cache=cache)
        llama = tiny_llama()
        cache = llama.new_cache()
        llama(torch.zeros(1, 35, dtype=torch.long), cache=cache)
        with pytest.raises(
            ConfigError, match=r"at most 40 positions, got \(1, 6\) after 35 cached"
        ):
            llama(torch.zeros(1, 6, dtype=torch.long), cache=cache)
    with pytest.raises(InputError, match="at most 128 positions"):
        model(torch.zeros(1, 129, dtype=torch.long))

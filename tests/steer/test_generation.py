"""Steering inside generation: with interventions active, cached generation gives the same
tokens as uncached generation (greedy and seeded sampling; glassllm, SmolLM2, a Hugging Face
folder through its own generate), the steered tokens differ from the unsteered, and the hooks
are gone afterwards."""

import pytest
import torch

from saescope.models import load_model
from saescope.models.generate import generate
from saescope.steer import AddVector, Edit, FeatureEdits, decoder_direction, steering
from tests.models.test_generate import hf_folder  # noqa: F401  (the tiny HF folder fixture)
from tests.steer.common import random_topk


def _sae(d: int, seed: int = 0):
    return random_topk(d, 4 * d, 8, seed)


def _both(model, ids, ivs, new=20, **kw):
    with steering(model, ivs):
        cached = generate(model, ids, new, **kw)
        uncached = generate(model, ids, new, use_cache=False, **kw)
    return cached, uncached


def test_glassllm_cached_equals_uncached_with_interventions(glass):
    model, tok = glass
    ids = torch.tensor([tok.encode("The Queen said to Alice that she")] * 2)
    sae = _sae(128)
    ivs = [
        FeatureEdits("layers.1", sae=sae, edits=[Edit(4, 6.0), Edit(9, 0.0, mode="zero")]),
        AddVector("layers.2", slice(5, None), vector=decoder_direction(sae, 11), alpha=4.0),
    ]
    plain = generate(model, ids, 20)
    cached, uncached = _both(model, ids, ivs)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, plain)  # the interventions act
    sampled, sampled_uncached = _both(model, ids, ivs, temperature=0.8, top_p=0.9, seed=3)
    assert torch.equal(sampled, sampled_uncached) and not torch.equal(sampled[0], sampled[1])
    assert torch.equal(generate(model, ids, 20), plain)  # hooks gone
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.slow
def test_smollm2_cached_equals_uncached_with_an_intervention():
    model, tok = load_model("smollm2")
    ids = torch.tensor([tok.encode("The capital of France is")])
    iv = FeatureEdits("model.layers.15", sae=_sae(576), edits=[Edit(7, 40.0)])
    cached, uncached = _both(model, ids, [iv])
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, generate(model, ids, 20))


@pytest.mark.slow
def test_a_hugging_face_folder_steers_through_its_own_generate(hf_folder):  # noqa: F811
    model, _ = load_model(hf_folder)
    ids = torch.tensor([[3, 4, 5, 6]])
    iv = AddVector("model.layers.0", vector=torch.ones(32), alpha=3.0)
    cached, uncached = _both(model, ids, [iv], new=12)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, generate(model, ids, 12))

"""Neighbours, co-firing and direct logits against brute force."""

import torch

from saescope.analysis.relations import cofiring, direct_logits, neighbours
from saescope.steer.effects import direct_logits as steer_direct_logits
from tests.steer.common import random_topk


def test_neighbours_are_the_nearest_decoder_directions(monkeypatch):
    monkeypatch.setattr("saescope.analysis.relations.BLOCK", 7)  # several blocks
    torch.manual_seed(0)
    w = torch.randn(20, 5)
    ids, cos = neighbours(w, 4)
    unit = w / w.norm(dim=1, keepdim=True)
    sims = unit @ unit.T
    sims.fill_diagonal_(-2)
    want = torch.topk(sims, 4, dim=1)
    assert torch.equal(ids, want.indices)
    assert torch.allclose(cos, want.values, atol=1e-6)
    assert not (ids == torch.arange(20)[:, None]).any()


def test_cofiring_is_the_ochiai_coefficient_on_the_sample(monkeypatch):
    monkeypatch.setattr("saescope.analysis.relations.BLOCK", 3)
    torch.manual_seed(1)
    d = 10
    fires = torch.rand(200, d) < torch.linspace(0.05, 0.6, d)
    fires[:, 9] = False  # never fires: no co-firing features
    feats = torch.where(fires, torch.arange(d), -1).int()
    ids, score = cofiring(feats, d, 3)
    a = fires.float()
    both = a.T @ a
    own = a.sum(0)
    ochiai = both / (own[:, None] * own[None]).sqrt().clamp_min(1e-12)
    ochiai.fill_diagonal_(-1)
    for i in range(d - 1):
        want = torch.topk(ochiai[i], 3)
        assert torch.allclose(score[i], want.values, atol=1e-6)
        assert (
            set(ids[i].tolist()) == set(want.indices.tolist()) or len(set(want.values.tolist())) < 3
        )
    assert (ids[9] == -1).all()


def test_direct_logits_are_steers(glass):
    model, _ = glass
    sae = random_topk(model.embed.weight.shape[1], 40, 4, seed=3)
    (top_ids, top_v), (bot_ids, bot_v) = direct_logits(sae.W_dec, model, 5)
    want = steer_direct_logits(sae, model)
    assert torch.equal(top_ids, torch.topk(want, 5, dim=1).indices)
    assert torch.allclose(top_v, torch.topk(want, 5, dim=1).values, atol=1e-5)
    assert torch.equal(bot_ids, torch.topk(-want, 5, dim=1).indices)
    assert torch.allclose(bot_v, -torch.topk(-want, 5, dim=1).values, atol=1e-5)
    assert direct_logits(torch.randn(40, 7), model, 5) is None  # not the residual width

"""The pieces of latent sharding: spans, the global top-k's ties, the bytes one step sends."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor

from saescope.errors import ConfigError
from saescope.saes import make_sae
from saescope.training import TrainConfig
from saescope.training.latents import ShardedSAE
from saescope.training.latents_loop import _slot, step
from saescope.training.shards import (
    SoloLatents,
    bytes_per_step,
    check_shardable,
    global_topk_mask,
    span,
)


def test_spans_cover_the_latents_once_and_differ_by_at_most_one():
    for d_sae, size in ((64, 2), (63, 2), (10, 3), (5, 5)):
        spans = [span(d_sae, r, size) for r in range(size)]
        assert spans[0][0] == 0 and spans[-1][1] == d_sae
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        widths = [hi - lo for lo, hi in spans]
        assert max(widths) - min(widths) <= 1


def test_the_global_top_k_keeps_k_per_row_and_breaks_ties_by_the_lower_latent():
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.5, 3.0], [2.0, -1.0, 0.0, 4.0, 1.0]])
    mask = global_topk_mask(scores, 2, 0, SoloLatents())
    assert mask.sum(1).tolist() == [2, 2]
    assert mask[0].tolist() == [False, True, True, False, False]  # 3, 3 (not the third 3)
    assert mask[1].tolist() == [True, False, False, True, False]
    want = scores.topk(3, dim=1).values.min(1).values
    kept = torch.where(global_topk_mask(scores, 3, 0, SoloLatents()), scores, float("inf"))
    assert torch.equal(kept.min(1).values, want)


@pytest.mark.parametrize(("arch", "fields"), [("gated", {}), ("matryoshka", {"k": 2})])
def test_an_architecture_it_does_not_shard_is_refused_in_one_line(arch, fields):
    sae = make_sae({"architecture": arch, "d_in": 8, "d_sae": 16, **fields})
    with pytest.raises(ConfigError, match=f"shards topk, .* not {arch}; train it with") as e:
        check_shardable(sae.cfg, 2)
    assert "\n" not in str(e.value)


def test_more_ranks_than_latents_is_refused():
    sae = make_sae({"architecture": "topk", "d_in": 8, "d_sae": 4, "k": 2})
    with pytest.raises(ConfigError, match="at least one latent per rank"):
        ShardedSAE(sae, type("G", (SoloLatents,), {"size": 8})())


class Counting(SoloLatents):
    """Rank 0 of a pretend group of `size` whose other ranks mirror it: the bytes it sends."""

    def __init__(self, size: int) -> None:
        self.size, self.sent = size, 0

    def _count(self, t: Tensor) -> Tensor:
        self.sent += t.numel() * t.element_size()
        return t

    def sum_(self, t: Tensor) -> Tensor:
        return self._count(t)

    def min_(self, t: Tensor) -> Tensor:
        return self._count(t)

    def all_gather(self, t: Tensor) -> list[Tensor]:
        return [self._count(t)] * self.size

    def kth_largest(self, candidates: Tensor, k: int) -> Tensor:
        self.sent += k * candidates.element_size()  # DDPGroup sends k (padded) each
        return super().kth_largest(candidates, k)


@pytest.mark.parametrize(
    ("arch", "fields"),
    [("topk", {"k": 3, "k_aux": 4}), ("batchtopk", {"k": 3, "k_aux": 4}), ("relu", {})],
)
def test_bytes_per_step_is_what_a_step_hands_to_the_collectives(arch, fields):
    torch.manual_seed(0)
    sae = make_sae({"architecture": arch, "d_in": 8, "d_sae": 32, **fields})
    group = Counting(2)
    slot = _slot(ShardedSAE(sae, group), TrainConfig(lr=1e-3, progress=False))
    slot.since_fired[:5] = 10**6  # 5 dead latents on this rank
    x = torch.randn(20, 8)
    step(slot, x, x, 0, TrainConfig(steps=10, lr=1e-3), 1000, torch.zeros(2, dtype=torch.float64))
    want = bytes_per_step(arch, 20, 8, 2, fields.get("k", 0), 4, dead=5)
    assert group.sent == want

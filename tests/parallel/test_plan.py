"""The plan at scale: each mode's bytes, FLOPs and communication from the sizes."""

import pytest

from saescope.parallel import plan
from saescope.saes import make_sae
from saescope.training.shards import bytes_per_step

SAE = plan.SAESize(d_in=16, d_sae=64, k=4)


def test_the_parameter_count_is_the_sae_s():
    sae = make_sae({"architecture": "topk", "d_in": 16, "d_sae": 64, "k": 4})
    assert SAE.params == sum(p.numel() for p in sae.parameters())
    assert len(list(sae.parameters())) == 4  # the `tensors` ddp_collectives counts


def test_ddp_replicates_and_all_reduces_the_gradients():
    one, two, four = (plan.ddp(SAE, 256, w) for w in (1, 2, 4))
    assert one.state == two.state == four.state == 16 * SAE.params
    assert one.collectives == [] and one.wire == 0
    grads = 4 * (SAE.params + 2 + 1 + 64 + 4) + 32
    assert two.wire == grads  # ring all-reduce: 2 (W - 1) / W of the buffer
    assert four.wire == pytest.approx(1.5 * grads)
    assert four.flops == pytest.approx(one.flops / 4)


def test_layers_hold_a_share_of_the_saes_and_exchange_activations():
    p = plan.layers(SAE, 256, 4, saes=8, act_bytes=4)
    assert p.state == 2 * 16 * SAE.params
    assert p.wire == pytest.approx(3 / 4 * 64 * 16 * 4 * 8)  # 64 tokens, 8 hooks, 3/4 away
    assert p.flops == pytest.approx(2 * 256 * SAE.flops_per_token())
    # one gather per owner (parallel.layers.Exchange); each root takes in 3 ranks' rows
    assert [(c.collective, c.root) for c in p.collectives] == [("gather", r) for r in range(4)]
    assert p.collectives[0].busiest() == 3 * 64 * 16 * 4 * 2
    few = plan.layers(SAE, 250, 4, saes=2, act_bytes=4)  # rank 3 owns none: sends to both
    assert len(few.collectives) == 2 and few.wire == 2 * 63 * 16 * 4  # padded to 63 rows


def test_latents_shard_the_state_and_move_candidates_and_reconstructions():
    p = plan.latents(SAE, 256, 4)
    assert p.state == pytest.approx(16 * SAE.params / 4)
    kinds = {c.kind: c.wire() for c in p.collectives}
    assert kinds["candidates"] == 3 * 256 * 4 * 16  # value and index, two float64s
    assert kinds["reconstruction"] == pytest.approx(1.5 * 256 * 16 * 4)
    assert "input" not in kinds  # every rank reads the whole batch
    shared = plan.latents(SAE, 256, 4, shared_input=True)
    assert {c.kind: c.wire() for c in shared.collectives}["input"] == 3 * 64 * 16 * 4
    with_grad = plan.latents(SAE, 256, 4, grad_exchange=True)
    assert with_grad.wire == pytest.approx(p.wire + kinds["reconstruction"])


@pytest.mark.parametrize("rows,ranks", [(256, 4), (1000, 3)])
def test_the_latents_plan_gives_what_the_sharded_step_sends(rows, ranks):
    given = sum(c.nbytes for c in plan.latents_collectives(SAE, rows, ranks))
    assert given == bytes_per_step("topk", rows, SAE.out, ranks, k=SAE.k)


def test_the_sparse_path_costs_less_and_the_limit_is_named():
    big = plan.SAESize(4096, 131072, 64)
    assert big.flops_per_token() < big.flops_per_token(sparse=False) / 2
    cluster = plan.Cluster(gpus=8)
    assert plan.ddp(big, 4096, 8, saes=32).limit(cluster) == "memory"
    assert plan.latents(big, 4096, 8).fits(cluster)
    combo = plan.latents_x_ddp(big, 4096, 8, 4)
    assert combo.ranks == 32 and combo.collectives[-1].kind == "shard gradients"
    assert cluster.link(8) == cluster.nvlink and cluster.link(16) == cluster.network

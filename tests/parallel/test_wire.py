"""The communication model: bytes a rank sends per collective under ring algorithms."""

import pytest

from saescope.parallel.wire import wire_bytes


def test_ring_all_reduce_all_gather_and_scatter():
    assert wire_bytes("all_reduce", 1000, 1) == 0
    assert wire_bytes("all_reduce", 1000, 2) == 1000
    assert wire_bytes("all_reduce", 1000, 4) == pytest.approx(1500)
    assert wire_bytes("all_gather", 1000, 4) == 3000
    assert wire_bytes("reduce_scatter", 1000, 4) == pytest.approx(750)
    assert wire_bytes("all_to_all", 1000, 4) == pytest.approx(750)


def test_broadcast_from_the_root_on_gloo_along_a_ring_on_nccl():
    assert [wire_bytes("broadcast", 10, 3, r, "gloo") for r in range(3)] == [20, 0, 0]
    assert [wire_bytes("broadcast", 10, 3, r, "nccl") for r in range(3)] == [10, 10, 0]


def test_a_butterfly_merge_sends_log2_w_rounds():
    assert wire_bytes("butterfly_topk", 10, 2) == 10
    assert wire_bytes("butterfly_topk", 10, 1000) == 100


def test_a_gather_to_one_rank_and_point_to_point():
    assert [wire_bytes("gather", 10, 3, r, root=1) for r in range(3)] == [10, 0, 10]
    assert wire_bytes("send", 10, 2, 1) == 10 and wire_bytes("recv", 10, 2, 0) == 0

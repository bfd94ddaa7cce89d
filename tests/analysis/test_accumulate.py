"""The streaming accumulators against brute force on small random data fed in several chunks:
counts, sums, maxima and histogram; the per-group top-k (at most one per context) equals a
full sort; the token sample is the tokens of smallest priority."""

import math

import numpy as np
import pytest
import torch

from saescope.analysis.accumulate import GroupTop, RowSample, Stats, log2_bins, priority


def _chunks(n: int, sizes=(7, 1, 30, 12)):
    lo, j = 0, 0
    while lo < n:
        hi = min(n, lo + sizes[j % len(sizes)])
        yield slice(lo, hi)
        lo, j = hi, j + 1


def test_priority_is_fixed_per_key_and_uniform():
    keys = torch.arange(20_000)
    p = priority(keys, salt=1)
    assert torch.equal(p, priority(keys.clone(), salt=1))
    assert not torch.equal(p, priority(keys, salt=2))
    assert p.min() >= 0 and p.max() < 1 and abs(float(p.mean()) - 0.5) < 0.01
    assert torch.equal(priority(keys[5:9], 1), p[5:9])  # a key's priority ignores the batch


def test_stats_equal_brute_force():
    torch.manual_seed(1)
    f = torch.relu(torch.randn(300, 9)) * torch.rand(9) * 40  # spans several octaves
    s = Stats(9, bins=64, low=-8)
    for sl in _chunks(300):
        rows, feats = (f[sl] > 0).nonzero(as_tuple=True)
        s.add(feats, f[sl][rows, feats])
    fired = (f > 0).sum(0)
    assert torch.equal(s.fired, fired)
    assert torch.allclose(s.total, f.double().sum(0))
    assert torch.equal(s.max, f.max(0).values)
    edges = s.edges().numpy()
    for j in range(9):
        v = f[:, j][f[:, j] > 0].double().numpy()
        want = np.histogram(np.clip(v, edges[1] / 2, 2**7.9), bins=np.r_[0, edges[1:-1], np.inf])
        assert s.hist[j].tolist() == want[0].tolist()
        assert int(s.hist[j].sum()) == int(fired[j])


def test_log2_bins_clamp_to_the_ends():
    v = torch.tensor([1e-9, 0.5, 1.0, 1.5, 2.0, 1e9])
    assert log2_bins(v, low=-2, per_unit=1.0, n=5).tolist() == [0, 1, 2, 2, 3, 4]


def _brute_top(group, score, ctx, groups, k):
    best = {}
    for g, s, c, i in zip(
        group.tolist(), score.tolist(), ctx.tolist(), range(len(group)), strict=True
    ):
        if (g, c) not in best or s > best[(g, c)][0]:
            best[(g, c)] = (s, i)
    out = {g: [] for g in range(groups)}
    for (g, _), (s, i) in best.items():
        out[g].append((s, i))
    return {g: sorted(v, reverse=True)[:k] for g, v in out.items()}


@pytest.mark.parametrize("k", [1, 3, 8])
def test_group_top_equals_a_full_sort(k):
    torch.manual_seed(k)
    n, groups = 400, 6
    group = torch.randint(0, groups, (n,))
    score = torch.rand(n, dtype=torch.float64)
    ctx = torch.arange(n) // 5  # five items per context; contexts never span chunks below
    key = torch.arange(n)
    acts = torch.randn(n, 3)
    top = GroupTop(groups, k, 3)
    for sl in _chunks(n, sizes=(20, 35, 5, 40)):
        idx = torch.arange(sl.start, sl.stop)

        def windows(i, idx=idx):
            return acts[idx[i]]

        top.offer(group[sl], score[sl], key[sl], ctx[sl], windows)
    want = _brute_top(group, score, ctx, groups, k)
    for g in range(groups):
        got = [(float(s), int(i)) for s, i in zip(top.score[g], top.key[g], strict=True) if i >= 0]
        assert got == [(s, i) for s, i in want[g]]
        for slot, (_, i) in enumerate(want[g]):
            assert torch.equal(top.acts[g, slot], acts[i])
        assert all(math.isinf(float(s)) for s in top.score[g, len(want[g]) :])


def test_row_sample_keeps_the_smallest_priorities():
    torch.manual_seed(2)
    n, d = 500, 12
    f = torch.relu(torch.randn(n, d))
    prio = priority(torch.arange(n), salt=2)
    sample = RowSample(40, width=5)
    for sl in _chunks(n):
        sample.offer(prio[sl], f[sl])
    want = torch.topk(prio, 40, largest=False).indices
    assert torch.equal(sample.prio, prio[want])
    for row, i in zip(sample.feats, want, strict=True):
        active = set(torch.topk(f[i], 5).indices[torch.topk(f[i], 5).values > 0].tolist())
        assert {int(x) for x in row if x >= 0} == active

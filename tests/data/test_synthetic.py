"""The ground-truth generators."""

import pytest
import torch

from saescope.data import (
    ArticleTask,
    ArticleTaskConfig,
    CorrelatedTask,
    CorrelatedTaskConfig,
    HierarchicalTask,
    HierarchicalTaskConfig,
)
from saescope.data.stream import HELD_OUT_SEED_OFFSET
from saescope.errors import ConfigError


def test_seed_task_matches_its_recipe():
    task = ArticleTask(ArticleTaskConfig(), batch_size=4096)
    x, c = task.sample(20_000, torch.Generator().manual_seed(0))
    active = (c > 0).sum(1)
    assert set(active.unique().tolist()) == {1, 2, 3}
    assert abs(float(active.float().mean()) - 2.0) < 0.03
    vals = c[c > 0]
    assert float(vals.min()) >= 0.5 and float(vals.max()) <= 2.0
    torch.testing.assert_close(x, c @ task.features)
    torch.testing.assert_close(task.features.norm(dim=1), torch.ones(8))
    assert torch.equal(task.batch(7)[0], task.batch(7)[0])  # batch i is a pure function of i


def test_correlated_task_recipe():
    task = CorrelatedTask(CorrelatedTaskConfig(), batch_size=2048)
    assert task.features.shape == (512, 256)
    torch.testing.assert_close(task.features.norm(dim=1), torch.ones(512))
    counts, per_feature = [], torch.zeros(512)
    for i in range(20):
        g = torch.Generator().manual_seed(i)
        x, c = task.sample(2048, g)
        torch.testing.assert_close(x, c @ task.features, rtol=1e-4, atol=1e-5)
        counts.append((c > 0).sum(1).float())
        per_feature += (c > 0).float().sum(0)
    counts = torch.cat(counts)
    assert counts.min() >= 1  # no empty sample
    assert 4.0 < float(counts.mean()) < 6.5  # about 5 active
    # Firing probabilities decay with the index (0.99^i): early features fire far more often.
    assert per_feature[:50].mean() > 3 * per_feature[-50:].mean()


def test_correlated_task_probabilities():
    task = CorrelatedTask(CorrelatedTaskConfig(d_in=16, n_features=64), batch_size=8)
    cov = task._chol @ task._chol.T
    torch.testing.assert_close(cov, cov.T)
    assert float(torch.linalg.eigvalsh(cov)[0]) > 0  # shifted to positive definite
    off = cov[~torch.eye(64, dtype=torch.bool)]
    assert 0.3 < float(off.mean()) < 0.7  # (R + R^T)/2 with R ~ U[0, 1]
    for i in range(5):
        p = task.probabilities(torch.Generator().manual_seed(i))
        assert abs(float(p.mean()) - 5 / 64) < 1e-6  # about mean_active features per sample
        assert not torch.equal(p, task.probabilities(torch.Generator().manual_seed(i + 1)))


def test_hierarchical_task_layout():
    cfg = HierarchicalTaskConfig(d_in=64, n_parents=3, n_children=2, n_independent=4)
    task = HierarchicalTask(cfg)
    assert cfg.n_total == 3 + 6 + 4
    assert task.features.shape == (13, 64)
    torch.testing.assert_close(task.features.norm(dim=1), torch.ones(13))
    off = (task.features @ task.features.T - torch.eye(13)).abs()
    assert float(off.max()) < 0.5  # near-orthogonal in 64-D
    assert task.parent_of.tolist() == [-1, -1, -1, 0, 0, 1, 1, 2, 2, -1, -1, -1, -1]
    for p in range(3):
        assert (task.parent_of[task.children(p)] == p).all()
    with pytest.raises(ConfigError):
        task.children(3)


def test_hierarchical_task_matches_its_recipe():
    cfg = HierarchicalTaskConfig()
    task = HierarchicalTask(cfg)
    x, c = task.sample(40_000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, c @ task.features)
    active = c != 0
    vals = c[active]
    assert float(vals.min()) >= cfg.coef_low and float(vals.max()) <= cfg.coef_high
    parent_on = active[:, : cfg.n_parents]
    for p in range(cfg.n_parents):
        kids = active[:, task.children(p)]
        assert not (kids.any(1) & ~parent_on[:, p]).any()  # a child only fires with its parent
        assert int(kids.sum(1).max()) == 1  # siblings are mutually exclusive
        on = parent_on[:, p]
        assert abs(float(on.float().mean()) - cfg.parent_prob) < 0.01
        assert abs(float(kids[on].any(1).float().mean()) - cfg.child_prob) < 0.03
        assert (kids[on].sum(0) > 0).all()  # every child fires sometimes
    indep = active[:, task.parent_of.eq(-1)][:, cfg.n_parents :]
    assert indep.shape[1] == cfg.n_independent
    assert abs(float(indep.float().mean()) - cfg.independent_prob) < 0.005
    assert abs(float(active.sum(1).float().mean()) - cfg.mean_active) < 0.05


def test_hierarchical_task_is_reproducible():
    cfg = HierarchicalTaskConfig()
    task = HierarchicalTask(cfg, batch_size=256, seed=3)
    x, c = task.batch_with_truth(5)
    assert torch.equal(x, HierarchicalTask(cfg, batch_size=256, seed=3).batch_with_truth(5)[0])
    assert torch.equal(c, task.batch_with_truth(5)[1])
    bx, by = task.batch(5)
    assert torch.equal(bx, x) and torch.equal(by, x)
    assert not torch.equal(task.batch(6)[0], x)
    held_out = HierarchicalTask(cfg, batch_size=256, seed=3 + HELD_OUT_SEED_OFFSET)
    assert not torch.equal(held_out.batch(5)[0], x)
    assert torch.equal(held_out.features, task.features)  # same features, other samples
    other = HierarchicalTask(HierarchicalTaskConfig(feature_seed=1))
    assert not torch.equal(other.features, task.features)


@pytest.mark.parametrize(
    "kw",
    [
        {"d_in": 0},
        {"n_parents": 0},
        {"n_children": 0},
        {"n_independent": -1},
        {"parent_prob": 1.5},
        {"child_prob": -0.1},
        {"independent_prob": 2.0},
        {"coef_low": 2.0, "coef_high": 1.0},
        {"coef_low": -0.5},
    ],
)
def test_hierarchical_task_rejects_bad_config(kw):
    with pytest.raises(ConfigError) as e:
        HierarchicalTaskConfig(**kw)
    assert "\n" not in str(e.value)


def test_hierarchical_task_rejects_bad_batch_size():
    with pytest.raises(ConfigError):
        HierarchicalTask(HierarchicalTaskConfig(), batch_size=0)

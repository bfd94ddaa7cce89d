"""The ground-truth generators."""

import torch

from saescope.data import CorrelatedTask, CorrelatedTaskConfig, SeedTask, SeedTaskConfig


def test_seed_task_matches_its_recipe():
    task = SeedTask(SeedTaskConfig(), batch_size=4096)
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
        torch.testing.assert_close(x, (c * task.strengths) @ task.features, rtol=1e-4, atol=1e-5)
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

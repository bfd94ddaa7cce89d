import itertools
import math

import pytest
import torch

from saescope import metrics


def test_hungarian_matching_recovers_a_permutation():
    feats = torch.linalg.qr(torch.randn(10, 10))[0]
    perm = torch.randperm(10)
    W_dec = torch.cat([feats[perm], torch.randn(5, 10)])  # 15 latents, 10 true features
    latent, cos = metrics.hungarian_match(W_dec, feats)
    assert torch.equal(perm[latent], torch.arange(10))
    torch.testing.assert_close(cos, torch.ones(10, dtype=torch.float64), atol=1e-6, rtol=0)
    assert metrics.mcc(W_dec, feats) > 0.999
    assert metrics.fraction_recovered(W_dec, feats) == 1.0


def test_one_to_one_matching_penalises_duplicates():
    feats = torch.eye(4)
    W_dec = torch.stack([feats[0], feats[0], feats[1], feats[2]])  # feature 3 missing
    assert float(metrics.max_cosine_per_feature(W_dec, feats).mean()) == 0.75
    assert metrics.mcc(W_dec, feats) == 0.75
    assert metrics.fraction_recovered(W_dec, feats) == 0.75


def test_firing_f1():
    c = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    f = torch.tensor([[0.0, 2.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])  # latent 1 ~ feature 0
    out = metrics.firing_f1(f, c, torch.tensor([1, 0]))
    torch.testing.assert_close(out["precision"], torch.tensor([2 / 3, 1.0], dtype=torch.float64))
    torch.testing.assert_close(out["recall"], torch.tensor([1.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(out["f1"], torch.tensor([0.8, 2 / 3], dtype=torch.float64))


def test_explained_variance_and_bias():
    y = torch.randn(100, 4)
    assert metrics.explained_variance(y, y) == 1.0
    assert abs(metrics.explained_variance(y, y.mean(0).expand_as(y))) < 1e-9
    assert abs(metrics.relative_reconstruction_bias(y, 0.5 * y) - 0.5) < 1e-9


# ----- MetricSums: the same numbers, batch by batch ---------------------------------------------


def plain_metrics(y, y_hat, f):
    """The metrics computed the plain way, on every row at once."""
    counts = metrics.firing_counts(f)
    return {
        "n_tokens": y.shape[0],
        "l0": metrics.l0(f),
        "mse": metrics.mse(y, y_hat),
        "explained_variance": metrics.explained_variance(y, y_hat),
        "cosine": metrics.cosine_similarity(y, y_hat),
        "relative_reconstruction_bias": metrics.relative_reconstruction_bias(y, y_hat),
        "norm_ratio": metrics.norm_ratio(y, y_hat),
        "dead_fraction": metrics.dead_fraction(counts),
        "dense_fraction": metrics.dense_fraction(counts, y.shape[0]),
    }


def _rows(n, d=12, d_sae=40, offset=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = offset + torch.randn(n, d, generator=g) * torch.linspace(0.5, 2.0, d)
    y_hat = 0.8 * y + 0.3 * torch.randn(n, d, generator=g)
    f = (torch.randn(n, d_sae, generator=g) - 1.2).relu()
    f[:, :5] = 0  # five dead latents
    return y, y_hat, f


def test_metric_sums_over_batches_equal_the_metrics_of_all_rows():
    y, y_hat, f = _rows(200)
    sums = metrics.MetricSums()
    bounds = [0, 7, 8, 8, 90, 151, 200]  # uneven batches, one of a single row, one empty
    for a, b in itertools.pairwise(bounds):
        sums.add(y[a:b], y_hat[a:b], f[a:b])
    got, want = sums.result(), plain_metrics(y, y_hat, f)
    assert list(got) == list(want)
    assert got["n_tokens"] == 200
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert got["dead_fraction"] == pytest.approx(5 / 40)
    assert torch.equal(sums.counts, metrics.firing_counts(f))


def test_metric_sums_explained_variance_survives_a_large_mean():
    """Per-batch means merged exactly: with a mean 10^8 times the spread, the shortcut
    sum ||y||^2 - N ||mean||^2 loses every digit even in float64."""
    y, _, f = _rows(300, seed=1)
    y = y.double() + 1e8
    y_hat = y + 0.5 * torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).double()
    sums = metrics.MetricSums()
    for a in range(0, 300, 64):
        sums.add(y[a : a + 64], y_hat[a : a + 64], f[a : a + 64])
    want = metrics.explained_variance(y, y_hat)
    shortcut = float(y.pow(2).sum() - 300 * y.mean(0).pow(2).sum())
    true_total = float((y - y.mean(0)).pow(2).sum())
    assert 0.3 < want < 0.99 and abs(shortcut - true_total) > 0.1 * true_total
    assert sums.result()["explained_variance"] == pytest.approx(want, rel=1e-9)


def test_metric_sums_take_masked_rows_apart():
    """Two instances fed complementary masks: each gives the metrics of its own rows."""
    y, y_hat, f = _rows(120, seed=2)
    outlier = y.norm(dim=-1) > y.norm(dim=-1).median()
    kept, set_aside = metrics.MetricSums(), metrics.MetricSums()
    for a in range(0, 120, 50):
        m = outlier[a : a + 50]
        kept.add(y[a : a + 50][~m], y_hat[a : a + 50][~m], f[a : a + 50][~m])
        set_aside.add(y[a : a + 50][m], y_hat[a : a + 50][m], f[a : a + 50][m])
    for sums, mask in ((kept, ~outlier), (set_aside, outlier)):
        want = plain_metrics(y[mask], y_hat[mask], f[mask])
        for key, value in sums.result().items():
            assert value == pytest.approx(want[key], rel=1e-5, abs=1e-7), key


def test_metric_sums_of_no_rows():
    sums = metrics.MetricSums()
    with pytest.raises(ValueError, match="before any add"):
        sums.result()
    y, y_hat, f = _rows(3)
    sums.add(y[:0], y_hat[:0], f[:0])
    out = sums.result()
    assert out["n_tokens"] == 0 and math.isnan(out["mse"]) and math.isnan(out["l0"])
    assert out["dead_fraction"] == 1.0 and sums.counts.shape == (40,)

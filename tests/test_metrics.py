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

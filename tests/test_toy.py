"""Toy models of superposition: geometry metrics and the intro experiment."""

import math

import pytest
import torch

from saescope.experiments.superposition import intro, neurons_per_feature
from saescope.toy import ToyConfig, dimensions_per_feature, feature_dimensionality, hidden_angles


def _polygon(k: int) -> torch.Tensor:
    t = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    return torch.stack([t.cos(), t.sin()], dim=1)


@pytest.mark.parametrize(
    ("W", "expected"),
    [
        (torch.eye(3, dtype=torch.float64), 1.0),  # dedicated dimensions
        (_polygon(2), 1 / 2),  # antipodal pair
        (_polygon(3), 2 / 3),  # triangle
        (_polygon(5), 2 / 5),  # pentagon
        (torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / 3**0.5, 3 / 4),
    ],
    ids=["identity", "antipodal", "triangle", "pentagon", "tetrahedron"],
)
def test_feature_dimensionality_of_exact_polytopes(W, expected):
    d = feature_dimensionality(W.double())
    torch.testing.assert_close(d, torch.full_like(d, expected))


def test_unrepresented_feature_has_zero_dimensionality():
    W = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert feature_dimensionality(W).tolist() == [1.0, 0.0]
    assert float(dimensions_per_feature(W)[0]) == 2.0


def test_hidden_angles_of_a_pentagon():
    assert hidden_angles(_polygon(5).float()) == pytest.approx([72.0] * 5, abs=1e-4)


def test_config_rejects_bad_shapes():
    with pytest.raises(ValueError, match="n_hidden"):
        ToyConfig(n_features=2, n_hidden=3)


@pytest.mark.claim
def test_intro_dense_is_orthogonal_top2_and_sparse_is_a_pentagon(claim_seed):
    r = intro(seed=claim_seed)
    dense = r.W[0]
    norms = dense.norm(dim=1)
    assert norms[:2].min() > 0.9 and norms[2:].max() < 0.1  # the two most important features
    assert abs(float(dense[0] @ dense[1])) < 0.05  # ... on orthogonal directions
    angles = r.sparse_angles
    assert len(angles) == 5 and all(abs(a - 72) <= 5 for a in angles), angles
    assert r.dims_per_feature[0] > 0.95 and r.dims_per_feature[-1] < 0.5
    # Polysemantic neurons: with five features in two neurons, each neuron serves several.
    assert all(len(fs) >= 2 for fs in neurons_per_feature(r.W[-1]))

"""The seed's superposition claims on toy models: the intro pentagon, 5 features in 2 neurons,
the phase diagram of 2 features in 1 dimension, and the geometry of 200 features in 20. One
test per claim seed (seed 0; 0-2 with --all-seeds), so parallel workers can share them out."""

import pytest

from saescope.experiments import phase
from saescope.experiments import superposition as sp
from saescope.experiments.superposition import intro, neurons_per_feature

pytestmark = pytest.mark.claim


def test_linear_keeps_two_relu_packs_more_and_neurons_are_polysemantic(claim_seed):
    r = sp.five_in_two(claim_seed)
    assert r.represented_linear <= 2
    assert r.represented_relu >= 3
    assert all(len(n) >= 2 for n in r.neurons_relu), r.neurons_relu
    assert all(c.holds for c in sp.five_in_two_section([r]).claims)


def test_phase_diagram(claim_seed):
    r = phase.phase_diagram(claim_seed)
    dense = r.phase[:, 0]
    assert not (dense == 2).any()  # dense features never superpose
    # At density 1 the important second feature takes the dimension, the unimportant one is
    # dropped.
    assert int(dense[-1]) == 1 and int(dense[0]) == 0
    assert int((r.phase[:, -3:] == 2).sum()) >= 20  # mostly superposed when sparse
    assert all(c.holds for c in phase.phase_section([r]).claims)


def test_dimensions_per_feature_sticks_at_one_half(claim_seed):
    r = phase.geometry(claim_seed)
    near = [d for d in r.dims_per_feature if abs(d - 0.5) <= 0.03]
    assert len(near) >= 3, r.dims_per_feature
    assert r.dims_per_feature[0] > 0.95  # dense: one dimension per feature
    assert r.dims_per_feature[-1] < 0.2  # sparsest: many features per dimension
    assert all(c.holds for c in phase.geometry_section([r]).claims)


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

"""The seed's superposition claims on toy models, on seeds 0-2: 5 features in 2 neurons, the
phase diagram of 2 features in 1 dimension, and the geometry of 200 features in 20. One test
per seed, so parallel workers can share them out."""

import pytest

from saescope.experiments import superposition as sp

SEEDS = [0, 1, 2]


@pytest.mark.parametrize("seed", SEEDS)
def test_linear_keeps_two_relu_packs_more_and_neurons_are_polysemantic(seed):
    r = sp.five_in_two(seed)
    assert r.represented_linear <= 2
    assert r.represented_relu >= 3
    assert all(len(n) >= 2 for n in r.neurons_relu), r.neurons_relu
    assert all(c.holds for c in sp.five_in_two_section([r]).claims)


@pytest.mark.parametrize("seed", SEEDS)
def test_phase_diagram(seed):
    r = sp.phase_diagram(seed)
    dense = r.phase[:, 0]
    assert not (dense == 2).any()  # dense features never superpose
    # At density 1 the important second feature takes the dimension, the unimportant one is
    # dropped.
    assert int(dense[-1]) == 1 and int(dense[0]) == 0
    assert int((r.phase[:, -3:] == 2).sum()) >= 20  # mostly superposed when sparse
    assert all(c.holds for c in sp.phase_section([r]).claims)


@pytest.mark.parametrize("seed", SEEDS)
def test_dimensions_per_feature_sticks_at_one_half(seed):
    r = sp.geometry(seed)
    near = [d for d in r.dims_per_feature if abs(d - 0.5) <= 0.03]
    assert len(near) >= 3, r.dims_per_feature
    assert r.dims_per_feature[0] > 0.95  # dense: one dimension per feature
    assert r.dims_per_feature[-1] < 0.2  # sparsest: many features per dimension
    assert all(c.holds for c in sp.geometry_section([r]).claims)

"""The seed's monosemanticity experiment: polysemantic neurons, monosemantic SAE features."""

import pytest
import torch
from matplotlib.figure import Figure

from saescope.experiments.monosemanticity import (
    MonoConfig,
    MonoResult,
    class_means,
    hidden_activations,
    purity,
    responds_to,
    run,
    section,
)
from saescope.report import Section

CFG = MonoConfig()


class _Runs(dict[int, MonoResult]):
    """run(seed), computed on first use and kept."""

    def __missing__(self, seed: int) -> MonoResult:
        self[seed] = run(seed)
        return self[seed]


@pytest.fixture(scope="module")
def results() -> dict[int, MonoResult]:
    return _Runs()


def test_purity_and_response_read_outs():
    means = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.6, 0.4, 0.7]])
    assert purity(means).tolist() == pytest.approx([1.0, 0.5, 0.7 / 1.7])
    assert responds_to(means, 0.5) == [[0], [0, 1], [0, 2]]


def test_seeds_change_the_data_and_the_models(results):
    """Each seed draws other data and trains another classifier: the hidden neurons' class
    means differ (seeds 0 and 1's classifiers: the first half of run(), a tenth of its cost)."""
    means = [class_means(H, y, CFG.n_classes) for H, y, _ in map(hidden_activations, (0, 1))]
    assert torch.equal(means[0], results[0].neuron_class_means)  # the path run() takes
    assert not torch.allclose(means[0], means[1])


@pytest.mark.claim
def test_classifier_learns_the_classes(results, claim_seed):
    assert results[claim_seed].accuracy >= 0.95


@pytest.mark.claim
def test_neurons_are_polysemantic(results, claim_seed):
    r = results[claim_seed]
    assert len(r.neuron_classes) == CFG.d_hidden
    assert r.neuron_class_means.shape == (CFG.d_hidden, CFG.n_classes)
    assert r.polysemantic_examples
    for i in r.polysemantic_examples:
        assert len(r.neuron_classes[i]) >= 2
    # the read-out is over all neurons, not just the examples
    alive = [c for c in r.neuron_classes if c]
    assert r.polysemantic_fraction == pytest.approx(sum(len(c) >= 2 for c in alive) / len(alive))
    assert r.polysemantic_fraction >= 0.5


@pytest.mark.claim
def test_sae_features_are_monosemantic(results, claim_seed):
    r = results[claim_seed]
    assert r.alive_features
    assert len(r.feature_purity) == len(r.alive_features)
    assert r.feature_class_means.shape == (len(r.alive_features), CFG.n_classes)
    assert r.median_purity >= 0.9
    assert r.classes_with_pure_feature == CFG.n_classes
    assert min(r.class_best_purity) >= 0.9
    # sparse, and still a reconstruction of the hidden activations
    assert r.l0 < 4
    assert r.explained_variance > 0.7


@pytest.mark.claim
def test_section_reports_the_claims_and_figures(results, seeds):
    s = section([results[seed] for seed in seeds])
    assert isinstance(s, Section)
    assert s.key == "monosemanticity"
    assert len(s.claims) == 3
    assert all(c.holds for c in s.claims), [c.measured for c in s.claims]
    assert len(s.figures) == 2
    assert all(isinstance(fig, Figure) for _, fig in s.figures)
    neuron_rows = s.tables[1][1]
    assert len(neuron_rows) == len(seeds)
    assert all(len(row) == 1 + CFG.d_hidden for row in neuron_rows)

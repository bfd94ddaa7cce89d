"""`evals.pareto`: one line per architecture, sorted by L0, missing values left out, and the
dead fraction in the panel beside the metric."""

import math

from saescope.evals.pareto import by_architecture, has_metric, pareto_figure

ROWS = [
    {"architecture": "topk", "l0": 32.0, "explained_variance": 0.9, "dead_fraction": 0.0},
    {"architecture": "relu", "l0": 20.0, "explained_variance": 0.7, "dead_fraction": 0.1},
    {"architecture": "topk", "l0": 8.0, "explained_variance": 0.6, "dead_fraction": 0.2},
    {"architecture": "relu", "l0": 5.0, "explained_variance": math.nan, "dead_fraction": 0.3},
]


def test_lines_by_architecture_sorted_by_l0_without_missing_values():
    lines = by_architecture(ROWS, "explained_variance")
    assert lines == {"topk": [(8.0, 0.6), (32.0, 0.9)], "relu": [(20.0, 0.7)]}
    assert has_metric(ROWS, "explained_variance")
    assert not has_metric(ROWS, "ce_loss_recovered")


def test_figure_has_the_metric_and_the_dead_fraction_side_by_side():
    fig = pareto_figure(ROWS, "explained_variance")
    metric, dead = fig.axes
    assert [line.get_label() for line in metric.get_lines()] == ["topk", "relu"]
    assert list(metric.get_lines()[0].get_xdata()) == [8.0, 32.0]
    assert list(dead.get_lines()[1].get_ydata()) == [0.3, 0.1]  # relu by L0: 5 then 20
    assert metric.get_xscale() == "log" and "explained variance" in metric.get_ylabel()
    assert dead.get_ylabel() == "dead fraction"

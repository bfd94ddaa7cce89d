"""The demo's Pareto section: the sweep's plot, its table and the target-L0 claim, from rows
(the sweep itself runs in the quick demo test and in tests/evals/test_sweep.py)."""

import pytest

from saescope.data import ArticleTaskConfig
from saescope.experiments.pareto import NEAR, TARGETS, TRUE_L0, ParetoResult, run, section


def _rows(off: float) -> list[dict]:
    rows = []
    for arch in ("topk", "relu"):
        for t in TARGETS:
            l0 = t * (1 + off) if arch == "relu" and t in (TRUE_L0, TARGETS[-1]) else float(t)
            ev = 0.5 + 0.1 * t + (0.05 if arch == "topk" else 0)
            extra = {"coefficient": "l1_coef=1"} if arch == "relu" else {}
            rows.append(
                {
                    "architecture": arch,
                    "target_l0": t,
                    "l0": l0,
                    "dead_fraction": 0.0,
                    "explained_variance": ev,
                    "mse": 0.1,
                    "mmcs": 0.9,
                    **extra,
                }
            )
    return rows


def test_section_plots_every_architecture_and_checks_the_targets():
    good = section(ParetoResult(0, 20, ArticleTaskConfig(), _rows(NEAR / 2)))
    ((_, fig),) = good.figures
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["topk", "relu"]
    assert len(good.tables[0][1]) == 2 * len(TARGETS)
    by_k, steered = good.claims
    assert by_k.holds and "TopK family" in by_k.claim and "topk" in by_k.measured
    assert steered.holds and f"relu at target {TRUE_L0}" in steered.measured
    assert f"relu at target {TARGETS[-1]}" in good.text  # the other targets: measured, said
    assert "topk explains the most variance" in good.text
    bad = section(ParetoResult(0, 20, ArticleTaskConfig(), _rows(3 * NEAR)))
    assert bad.claims[0].holds and bad.claims[1].holds is False
    assert "(+30.0%)" in bad.claims[1].measured


@pytest.mark.claim
@pytest.mark.slow
@pytest.mark.heavy  # about 31 s of CPU: `make claims` only
def test_the_demos_pareto_claims_hold(claim_seed):
    """The demo's sweep itself: the TopK family on its targets, the controlled ones at the
    task's true L0 (about 30 s of one core)."""
    result = run(claim_seed)
    shown = section(result)
    assert len(result.rows) == 6 * len(TARGETS)
    assert [c.holds for c in shown.claims] == [True, True], [c.measured for c in shown.claims]

"""The Golden Gate experiment on glassllm: the claims of its report section (per seed), the
quick run's shape, and the sweep on a trained run (`python -m saescope.experiments.steering`)."""

import json
from dataclasses import replace

import pytest

from saescope.cli import main as saescope
from saescope.errors import ConfigError
from saescope.experiments import steering
from saescope.experiments.steering import SteeringConfig, rising_run, run, section

CFG = SteeringConfig()
QUICK = replace(CFG, train_tokens=8192, samples=2, new_tokens=16, eval_contexts=8)


@pytest.fixture(scope="module")
def result(claim_seed):
    return run(claim_seed, CFG)


def test_rising_run():
    assert rising_run([]) == 0 and rising_run([3.0]) == 1
    assert rising_run([1, 2, 2, 3, 4, 5, 1]) == 4 and rising_run([5, 4, 3]) == 1


@pytest.mark.claim
def test_the_concept_feature_is_found_by_its_logit_effect(result, claim_seed):
    """The chosen feature writes the word: it is among its 5 top direct-logit tokens."""
    assert result.seed == claim_seed and result.logit_rank <= 5
    assert CFG.word in result.top_tokens and result.max_act > 0
    assert result.pick == "logit" and result.contrast_feature != result.feature


@pytest.mark.claim
def test_clamping_high_raises_the_top_tokens_probability_on_90_percent(result, claim_seed):
    assert [p.multiple for p in result.points] == list(CFG.multiples)
    assert all(p.raised >= 0.9 for p in result.points), [p.raised for p in result.points]


@pytest.mark.claim
def test_the_concepts_frequency_in_generations_rises_over_4_clamp_values(result, claim_seed):
    rates = [p.rate for p in result.points]
    assert rising_run(rates) >= 4, rates
    assert rates[-1] >= 10 * max(result.clean.rate, 1e-3), (
        rates
    )  # seed 0: 44.3 against 1.0 per 1,000
    # the feature that fires most specifically on the word writes it less, clamped as high
    assert result.contrast is not None and result.contrast.rate < rates[-1]


@pytest.mark.claim
def test_the_concepts_probability_rises_and_the_price_is_ce(result, claim_seed):
    p_words = [p.p_word for p in result.points]
    ces = [p.ce for p in result.points]
    assert rising_run(p_words) == len(p_words) and p_words[0] > result.clean.p_word
    assert rising_run(ces) == len(ces) and ces[-1] > result.clean.ce + 0.5, ces


@pytest.mark.claim
def test_every_claim_of_the_section_holds(result, claim_seed):
    s = section([result], CFG)
    assert len(s.claims) == 4 and all(c.holds for c in s.claims), s.claims


@pytest.mark.slow
def test_a_quick_run_keeps_the_sections_shape():
    r = run(0, QUICK)
    assert [p.multiple for p in r.points] == list(QUICK.multiples)
    values = [p.value for p in r.points]
    assert values == sorted(values) and values[0] == pytest.approx(r.max_act)
    s = section([r, r], QUICK)
    assert s.key == "steering" and len(s.figures) == 1 and len(s.claims) == 4
    assert len(s.tables[0][1]) == len(QUICK.multiples) + 2  # unsteered, the sweep, contrast
    assert all(c.holds is not None for c in s.claims)
    assert "seed 0:" in s.claims[0].measured  # every seed's numbers


TEXT = (
    "The Queen said to the King, and the King said to the Queen: off with his head! Alice "
    "looked at the Queen, and the Queen looked at the Mock Turtle, who sighed. "
)


@pytest.mark.slow
def test_the_sweep_on_a_trained_run(tmp_path, capsys):
    (tmp_path / "t.txt").write_text(TEXT * 80)
    argv = ["train", "--arch", "topk", "--model", "glassllm", "--hook", "layers.1"]
    argv += ["--text", str(tmp_path / "t.txt"), "--context", "32", "--tokens", "4096"]
    argv += ["--d-sae", "128", "--k", "8", "--batch-size", "256", "--progress", "false"]
    assert saescope([*argv, "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    plot = tmp_path / "sweep.png"
    args = ["--run", str(tmp_path / "run"), "--word", " Queen", "--multiples", "1", "4"]
    args += ["--samples", "2", "--new-tokens", "6", "--search-tokens", "100"]
    assert steering.main([*args, "--eval-contexts", "3", "--plot", str(plot)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hook"] == "layers.1" and out["word"] == " Queen"
    assert [p["multiple"] for p in out["points"]] == [1.0, 4.0]
    assert len(out["claims"]) == 4 and plot.stat().st_size > 5000


def test_bad_settings_and_runs_are_one_line_errors(tmp_path, capsys):
    for bad in ({"pick": "neither"}, {"multiples": ()}, {"samples": 0}):
        with pytest.raises(ConfigError) as e:
            steering.check(replace(CFG, **bad))
        assert "\n" not in str(e.value)
    argv = ["train", "--arch", "topk", "--tokens", "2048", "--progress", "false"]
    assert saescope([*argv, "--out", str(tmp_path / "syn")]) == 0
    capsys.readouterr()
    assert steering.main(["--run", str(tmp_path / "syn")]) == 2
    err = capsys.readouterr().err.strip()
    assert "was not trained on a model's activations" in err and "\n" not in err

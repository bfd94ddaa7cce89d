"""The suite registry: names checked, results as table rows."""

import pytest

from saescope.errors import ConfigError
from saescope.evals import SUITES, SuiteOptions, parse_suites, run_suites, summary, summary_rows


def test_suites_are_parsed_in_order_without_repeats():
    assert parse_suites("probing, core,probing") == ["probing", "core"]
    assert parse_suites(["absorption"]) == ["absorption"]
    assert set(SUITES) == {"core", "probing", "absorption"}


@pytest.mark.parametrize("text", ["cores", "core,,x", " ,"])
def test_an_unknown_or_empty_suite_is_one_line_naming_the_known(text):
    with pytest.raises(ConfigError, match="core, probing, absorption") as e:
        parse_suites(text)
    assert "\n" not in str(e.value)


def test_names_are_checked_before_anything_runs():
    with pytest.raises(ConfigError, match="unknown suite 'nope'"):
        run_suites(None, "core,nope")  # type: ignore[arg-type]


def test_sized_options():
    opts = SuiteOptions.sized(probe_contexts=10, words=50)
    assert (opts.probing.n_train, opts.probing.n_test, opts.absorption.n_words) == (10, 5, 50)


def test_summary_rows():
    probing = {
        "s": {
            "tasks": {"t": {"raw": 0.9, "sae": {"1": 0.6, "2": 0.7}}},
            "mean": {"raw": 0.9, "sae_1": 0.6, "sae_2": 0.7},
        }
    }
    rows = summary_rows("probing", probing)
    assert rows == [
        {"sae": "s", "task": "t", "raw": 0.9, "sae_1": 0.6, "sae_2": 0.7},
        {"sae": "s", "task": "mean", "raw": 0.9, "sae_1": 0.6, "sae_2": 0.7},
    ]
    absorption = {"s": {"mean_absorption": 0.1, "mean_fraction": 0.2, "mean_main_silent": 0.3}}
    absorption["s"]["classes_scored"] = 20
    absorption["s"] |= {"probe_accuracy": 0.8, "n_words": 100}
    (row,) = summary_rows("absorption", absorption)
    assert row["mean_absorption"] == 0.1 and row["n_words"] == 100
    assert "mean_fraction" in summary("absorption", absorption).splitlines()[0]
    (row,) = summary_rows("core", {"s": {"architecture": "topk", "l0": 3.0}})
    assert row["l0"] == 3.0 and row["architecture"] == "topk"

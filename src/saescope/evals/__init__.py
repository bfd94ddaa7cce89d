"""Evaluation suites of a trained run (`saescope eval RUN --suite core,probing,absorption`).

`SUITES` names each suite and the function that runs it on a `Run`: `core` (the metrics of
`Run.evaluate`: L0, MSE, explained variance, dead latents, CE loss recovered, ...),
`probing` (k-sparse probing against a probe on the raw activations, `evals.probing`) and
`absorption` (SAEBench's first-letter absorption, `evals.absorption`). Each gives
{sae name: result}; `run_suites` runs several and `summary_rows` turns a result into table
rows. docs/EVALS.md defines each metric and names its paper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from saescope.errors import ConfigError
from saescope.evals.absorption import AbsorptionConfig, first_letter
from saescope.evals.probing import ProbingConfig, probing
from saescope.runs import DataSpec, Run
from saescope.text import table


@dataclass
class SuiteOptions:
    """What the suites take beside the run: core's tokens, data and batch size (see
    `Run.evaluate`), and the probing and absorption settings."""

    tokens: int = 65_536
    data: DataSpec | None = None
    batch_size: int | None = None
    plot: bool = True
    probing: ProbingConfig = field(default_factory=ProbingConfig)
    absorption: AbsorptionConfig = field(default_factory=AbsorptionConfig)

    @classmethod
    def sized(
        cls,
        tokens: int = 65_536,
        data: DataSpec | None = None,
        batch_size: int | None = None,
        probe_contexts: int = 128,
        words: int = 1500,
    ) -> SuiteOptions:
        """Options by size: core's tokens, probing's training contexts per class (held-out:
        half as many), absorption's words."""
        probe = ProbingConfig(n_train=probe_contexts, n_test=max(1, probe_contexts // 2))
        return cls(tokens, data, batch_size, probing=probe, absorption=AbsorptionConfig(words))


Suite = Callable[[Run, SuiteOptions], dict[str, dict[str, Any]]]


def _core(run: Run, opts: SuiteOptions) -> dict[str, dict[str, Any]]:
    return run.evaluate(opts.tokens, opts.data, opts.plot, opts.batch_size)


def _model(run: Run, suite: str) -> tuple[Any, Any, str]:
    """The run's model, tokenizer and hook (the SAE's input), or a one-line error for a run
    not trained on a model's activations."""
    data = run.data
    if data is None or data.kind not in ("model", "cache") or not data.model:
        what = data.describe() if data is not None else "data it does not record"
        raise ConfigError(
            f"the {suite} suite needs a run trained on a language model's activations (its "
            f"tokenizer and text); {run.path} was trained on {what}"
        )
    model, tokenizer = data.load_model()
    return model, tokenizer, data.hooks.x


def _probing(run: Run, opts: SuiteOptions) -> dict[str, dict[str, Any]]:
    model, tokenizer, hook = _model(run, "probing")
    return probing(model, tokenizer, hook, run.saes, opts.probing)


def _absorption(run: Run, opts: SuiteOptions) -> dict[str, dict[str, Any]]:
    model, tokenizer, hook = _model(run, "absorption")
    return first_letter(model, tokenizer, hook, run.saes, opts.absorption)


SUITES: dict[str, Suite] = {"core": _core, "probing": _probing, "absorption": _absorption}


def parse_suites(text: str | Sequence[str]) -> list[str]:
    """The suite names of "core,probing" (or a list), checked: an unknown one is a one-line
    error listing the known ones."""
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text)]
    names = [s for s in names if s]
    if not names:
        raise ConfigError(f"name at least one suite; known: {', '.join(SUITES)}")
    for name in names:
        if name not in SUITES:
            raise ConfigError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    return list(dict.fromkeys(names))


def run_suites(
    run: Run, names: str | Sequence[str], opts: SuiteOptions | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """{suite: {sae name: result}} of each suite named, in order (names checked first)."""
    checked = parse_suites(names)
    opts = opts or SuiteOptions()
    return {name: SUITES[name](run, opts) for name in checked}


CORE_COLUMNS = ["sae", "architecture", "l0", "mse", "explained_variance", "dead_fraction"]
CORE_COLUMNS += ["ce_loss_recovered"]


def summary_rows(suite: str, result: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows of a suite's result: per SAE (core: its metrics; absorption: the mean rate
    and fraction, the letters scored, the probe's accuracy) or per SAE and task (probing: the
    raw probe's and each k-sparse probe's held-out accuracy)."""
    rows: list[dict[str, Any]] = []
    for sae, got in result.items():
        if suite == "core":
            rows.append({"sae": sae, **{k: got.get(k) for k in CORE_COLUMNS[1:]}})
        elif suite == "probing":
            for task, acc in {**got["tasks"], "mean": None}.items():
                vals = (
                    got["mean"]
                    if acc is None
                    else {"raw": acc["raw"]} | {f"sae_{k}": v for k, v in acc["sae"].items()}
                )
                rows.append({"sae": sae, "task": task, **vals})
        elif suite == "absorption":
            keys = ("mean_absorption", "mean_fraction", "mean_main_silent", "classes_scored")
            keys += ("probe_accuracy",)
            rows.append({"sae": sae, **{k: got[k] for k in keys}, "n_words": got["n_words"]})
    return rows


def summary(suite: str, result: dict[str, dict[str, Any]]) -> str:
    """A suite's result as a terminal table."""
    rows = summary_rows(suite, result)
    return table(rows, list(rows[0])) if rows else "(no SAEs)"


__all__ = [
    "SUITES",
    "AbsorptionConfig",
    "ProbingConfig",
    "SuiteOptions",
    "parse_suites",
    "run_suites",
    "summary",
    "summary_rows",
]

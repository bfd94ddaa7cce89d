"""The Golden Gate experiment (Templeton et al. 2024, "Scaling Monosemanticity"): clamp one
concept feature high and the model's behaviour follows, at a price.

On glassllm (`run`): a TopK SAE is trained on the residual stream after block 1, on
Shakespeare's history plays; the concept feature for " King" is picked automatically by
`steer.search.token_features` (the top of its logit ranking: of the features that fire on
held-out text, the one whose direct logit effect ranks the word highest) and clamped at
multiples of its maximum activation by `steer.sweep.clamp_sweep`. At each clamp value: how often
the concept is mentioned in generations from neutral prompts (fixed seeds, temperature
sampling with the KV cache, inside `steer.steering`), and on held-out text the CE (the price),
the word's mean next-token probability and, context by context, whether the feature's top
logit token became more likely.

Choices, measured on seeds 0-2 while designing it: SAEs on layers 1, 2 and 3 all steer (on
the whole corpus, at 12x " King" rose from about 1 to 13-44 per 1,000 generated tokens);
layer 1 kept. At 1-2x the change is within sampling noise (ties between neighbouring clamp values
with 16 samples per prompt), hence clamp values spaced up to 16x and 24 samples per prompt.
The history plays hold 449 of the corpus's 647 " King"s in a quarter of its tokens (tokenised
in about 1.3 s instead of 7); " Queen" is 4.5 times rarer.

On another run (SmolLM2): `from_run`, from the command
`python -m saescope.experiments.steering --run RUN --word WORD` (docs/RESULTS.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from saescope.data.corpus import default_dir
from saescope.data.outliers import OutlierRule
from saescope.errors import ConfigError, SaescopeError
from saescope.experiments.common import torch_threads
from saescope.report import Claim, Section, save_figure, subplots
from saescope.runs import DataSpec, Run, build_sae, steps_for_tokens, train_run
from saescope.saes import SAE
from saescope.steer.sweep import OTHER, PICKS, Sweep, clamp_sweep
from saescope.training import TrainConfig

_PROMPTS = "She said|He looked at|Then she|So they|One day|At last|It was a|There was"
PROMPTS = tuple(_PROMPTS.split("|"))
"""Neutral prompts: none names the concept; each is 3 glassllm tokens, so they run as one
batch."""

HISTORIES = tuple(
    f"{play}_gut.txt"
    for play in "john richard_ii henry_iv_part_1 henry_iv_part_2 henry_v henry_vi_part_1 "
    "henry_vi_part_2 henry_vi_part_3 richard_iii henry_viii".split()
)
"""Shakespeare's ten history plays, of the default corpus."""

CHATML = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
"""A request in the chat format of SmolLM2-Instruct (ChatML), for `--chatml`."""
_REQUESTS = (
    "Write a short poem.|Tell me a story.|Describe your ideal weekend.|Give me some advice.|"
    "Write a letter to a friend.|What makes a good day?|Describe a city at night.|Write a song."
)
REQUESTS = tuple(_REQUESTS.split("|"))
"""Neutral requests to an instruct model: none names a concept."""


@dataclass(frozen=True)
class SteeringConfig:
    """The model, the SAE, the concept and the sweep."""

    model: str = "glassllm"
    """The model (glassllm; `from_run` takes the run's)."""
    texts: tuple[str, ...] = HISTORIES
    """Files of the default corpus the SAE trains on and is measured on (empty: all of it)."""
    hook: str = "layers.1"
    """The residual layer the SAE reads and the clamp acts on."""
    word: str = " King"
    """The concept word (leading space: a word inside a sentence)."""
    d_sae: int = 2048
    """SAE latents."""
    k: int = 16
    """TopK's active latents per token."""
    train_tokens: int = 131_072
    """Training tokens of the SAE."""
    search_tokens: int = 16_384
    """Held-out tokens the feature is searched in (and its maximum activation measured)."""
    multiples: tuple[float, ...] = (1, 2, 4, 8, 12, 16)
    """Clamp values, as multiples of the feature's maximum activation on held-out text."""
    prompts: tuple[str, ...] = PROMPTS
    """The neutral prompts generations start from."""
    samples: int = 24
    """Samples per prompt (each prompt's seeds are the same at every clamp value)."""
    new_tokens: int = 32
    """Tokens generated per sample."""
    temperature: float = 1.0
    """Sampling temperature."""
    eval_contexts: int = 32
    """Held-out contexts for CE and p(word): spread evenly over those not searched."""
    pick: str = "logit"
    """Which ranking of `token_features` the concept feature is the top of: "logit" (the
    feature whose direct logit effect ranks the word highest) or "activation" (the feature
    most specific to the word by activation on it)."""
    high: float = 1.0
    """The clamp (a multiple) from which the top logit token must rise on >= 90% of
    contexts."""
    threads: int | None = 1
    """torch CPU threads (None: leave as set)."""


def measure(
    sae: SAE,
    model: nn.Module,
    tokenizer: Any,
    contexts: Tensor,
    cfg: SteeringConfig,
    seed: int = 0,
    outliers: OutlierRule | None = None,
    explained_variance: float | None = None,
) -> Sweep:
    """The sweep on held-out contexts: the feature is searched in the first ones, the clamp
    measured on `cfg.eval_contexts` of the others, spread evenly over them."""
    n_search = max(1, math.ceil(cfg.search_tokens / (contexts.shape[1] - 1)))
    search, rest = contexts[:n_search], contexts[n_search:]
    rest = rest if rest.shape[0] else contexts
    spread = torch.linspace(0, rest.shape[0] - 1, min(cfg.eval_contexts, rest.shape[0]))
    evaluate = rest[spread.round().long().unique()]
    settings = {k: getattr(cfg, k) for k in ("samples", "new_tokens", "temperature", "pick")}
    sweep = clamp_sweep(
        sae,
        model,
        tokenizer,
        cfg.hook,
        cfg.word,
        search,
        evaluate,
        cfg.multiples,
        cfg.prompts,
        outliers=outliers,
        **settings,
    )
    return replace(sweep, seed=seed, explained_variance=explained_variance)


def check(cfg: SteeringConfig) -> None:
    """One-line errors for a sweep that cannot run."""
    if cfg.pick not in PICKS:
        raise ConfigError(f"pick {cfg.pick!r}: choose one of {', '.join(PICKS)}")
    if not cfg.multiples or any(not math.isfinite(m) for m in cfg.multiples):
        raise ConfigError(f"clamp multiples {cfg.multiples}: give finite numbers")
    if min(cfg.samples, cfg.new_tokens, cfg.eval_contexts, len(cfg.prompts)) < 1:
        raise ConfigError("samples, new tokens, held-out contexts and prompts must be >= 1")


def run(seed: int = 0, cfg: SteeringConfig = SteeringConfig()) -> Sweep:
    """Train a TopK SAE on glassllm's residual layer (seed: the SAE's init and data order) and
    sweep the clamp of its concept feature."""
    check(cfg)
    with torch_threads(cfg.threads):
        text = [default_dir() / name for name in cfg.texts] or None
        data = DataSpec.for_model(cfg.model, cfg.hook, text=text, seed=seed)
        stream = data.open(1024)
        steps = steps_for_tokens(cfg.train_tokens, stream)
        train = TrainConfig(steps=steps, seed=seed, progress=False)
        torch.manual_seed(seed)
        sae = build_sae("topk", stream, d_sae=cfg.d_sae, k=cfg.k)
        result = train_run(sae, data, stream, train, None)
        sae = result.saes[0].eval()
        ev = result.final_metrics[0].get("explained_variance")
        model, tokenizer = data.load_model()
        return measure(sae, model, tokenizer, data.contexts("test"), cfg, seed, None, ev)


def from_run(path: str | Path, cfg: SteeringConfig, sae: str | None = None) -> Sweep:
    """The sweep with a trained run's SAE (its only one, or `sae`), at its hook, on its
    model's held-out contexts, with its outlier rule."""
    check(cfg)
    r = Run.open(path)
    contexts = r.held_out_contexts()  # every one; refuses a run without a model
    _, chosen = r.sae(sae)
    assert r.data is not None
    model, tokenizer = r.data.load_model()
    cfg = replace(cfg, hook=r.data.hooks.x, model=str(r.data.model))
    with torch_threads(cfg.threads):
        return measure(chosen.eval(), model, tokenizer, contexts, cfg, 0, r.outlier_rule)


# ----- the report section -------------------------------------------------------------------


def rising_run(values: Sequence[float]) -> int:
    """The length of the longest run of consecutive values that rise strictly."""
    best = cur = 1 if values else 0
    for a, b in itertools.pairwise(values):
        cur = cur + 1 if b > a else 1
        best = max(best, cur)
    return best


def plot(r: Sweep) -> Figure:
    """(a) the concept's frequency in generations and its mean next-token probability, (b) CE
    on held-out text, both against the clamp value."""
    fig, (a, b) = subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    x = [p.multiple for p in r.points]
    a.plot(x, [1000 * p.rate for p in r.points], "o-", color="C0", label="in generations")
    a.axhline(1000 * r.clean.rate, color="C0", linestyle=":", linewidth=1)
    a.set_xlabel("clamp value (multiples of the feature's maximum activation)")
    a.set_ylabel(f"{r.word.strip()!r} per 1,000 generated tokens", color="C0")
    twin = a.twinx()
    twin.plot(x, [p.p_word for p in r.points], "s--", color="C1")
    twin.axhline(r.clean.p_word, color="C1", linestyle=":", linewidth=1)
    twin.set_ylabel(f"mean next-token p({r.word.strip()!r}), held-out text", color="C1")
    a.set_title(f"(a) the concept: feature {r.feature} clamped (dotted: unsteered)")
    b.plot(x, [p.ce for p in r.points], "o-", color="C3", label="clamped")
    b.axhline(r.clean.ce, color="k", linestyle=":", linewidth=1, label="unsteered")
    b.set_xlabel("clamp value (multiples of the feature's maximum activation)")
    b.set_ylabel("next-token CE on held-out text (nats)")
    b.set_title("(b) the price")
    b.legend(fontsize=8)
    return fig


def _points(r: Sweep, key: str, fmt: str, scale: float = 1.0) -> str:
    return ", ".join(f"{p.multiple:g}x {scale * getattr(p, key):{fmt}}" for p in r.points)


def claims(r: Sweep, cfg: SteeringConfig) -> list[Claim]:
    """The experiment's claims on one sweep."""
    high = [p for p in r.points if p.multiple is not None and p.multiple >= cfg.high]
    rates = [p.rate for p in r.points]
    ces = [p.ce for p in r.points]
    p_words = [p.p_word for p in r.points]
    word = repr(r.word.strip())
    return [
        Claim(
            f"Clamping the concept feature at >= {cfg.high:g}x its maximum activation raises "
            f"its top logit token's ({r.top_token!r}) probability on >= 90% of held-out contexts",
            "raised on " + ", ".join(f"{p.raised:.0%} at {p.multiple:g}x" for p in high),
            bool(high) and all(p.raised >= 0.9 for p in high),
        ),
        Claim(
            f"The concept's frequency in generations ({word} per generated token) rises "
            "monotonically over at least 4 clamp values",
            f"per 1,000 tokens: {r.clean.rate * 1000:.1f} unsteered; "
            + _points(r, "rate", ".1f", 1000)
            + f" (rising over {rising_run(rates)} consecutive clamp values)",
            rising_run(rates) >= 4,
        ),
        Claim(
            "The concept's mean next-token probability on held-out text rises with every "
            "clamp value",
            f"p({word}) {r.clean.p_word:.4f} unsteered; " + _points(r, "p_word", ".4f"),
            rising_run(p_words) == len(p_words),
        ),
        Claim(
            "The price: CE on held-out text rises with every clamp value and ends above the "
            "unsteered CE",
            f"{r.clean.ce:.3f} nats unsteered; " + _points(r, "ce", ".3f"),
            rising_run(ces) == len(ces) and ces[-1] > r.clean.ce,
        ),
    ]


def _table(r: Sweep) -> list[dict[str, Any]]:
    rows = []
    for p in [r.clean, *r.points, r.contrast]:
        if p is None:
            continue
        if p is r.contrast:
            clamp = f"feature {r.contrast_feature} at {p.multiple:g}x ({p.value:.2f})"
        elif p.multiple is None:
            clamp = "unsteered"
        else:
            clamp = f"feature {r.feature} at {p.multiple:g}x ({p.value:.2f})"
        rows.append(
            {
                "clamp": clamp,
                "per 1,000 tokens": round(1000 * p.rate, 1),
                "samples holding it": f"{p.samples_with:.0%}",
                f"p({r.word.strip()})": round(p.p_word, 5),
                "CE (nats)": round(p.ce, 3),
                "top token raised": f"{p.raised:.0%}",
                "example (first prompt, first sample)": p.example[:100],
            }
        )
    return rows


def section(results: list[Sweep], cfg: SteeringConfig = SteeringConfig()) -> Section:
    """The report section: the first seed's sweep and table; every seed's claims."""
    r = results[0]
    per_seed = [claims(x, cfg) for x in results]
    merged = [
        Claim(
            c.claim,
            "; ".join(
                f"seed {x.seed}: {cs[i].measured}" for x, cs in zip(results, per_seed, strict=True)
            )
            if len(results) > 1
            else c.measured,
            all(cs[i].holds for cs in per_seed),
        )
        for i, c in enumerate(per_seed[0])
    ]
    ev = f", explained variance {r.explained_variance:.3f}" if r.explained_variance else ""
    contrast = ""
    if r.contrast is not None:
        contrast = (
            f" For contrast, the top feature by {OTHER[r.pick]} (feature {r.contrast_feature}) "
            f"clamped at {r.contrast.multiple:g}x its own maximum gives "
            f"{1000 * r.contrast.rate:.1f} per 1,000 tokens, against "
            f"{1000 * r.points[-1].rate:.1f} for the chosen feature."
        )
    text = (
        f"A TopK SAE (d_sae {cfg.d_sae}, k {cfg.k}, {cfg.train_tokens:,} training tokens{ev}) "
        f"on {cfg.model}'s residual stream at {r.hook}. The concept feature is picked "
        f"automatically (`saescope features RUN --token {r.word!r}`), on {cfg.search_tokens:,} "
        f"held-out tokens: {PICKS[r.pick]} (feature {r.feature}: {r.word!r} ranks "
        f"{r.logit_rank} among its direct logits, activation score {r.score:.2f}; top tokens "
        f"{', '.join(map(repr, r.top_tokens))}; maximum activation {r.max_act:.2f}). It is "
        "clamped (set on every position but the first, the SAE's error term kept) at "
        f"multiples of that maximum, as Templeton et al. clamped the Golden Gate Bridge "
        f"feature. Generations: {len(cfg.prompts)} neutral prompts x {cfg.samples} samples x "
        f"{cfg.new_tokens} tokens at temperature {cfg.temperature:g}, the same seeds at every "
        f"clamp value; CE and p({r.word!r}) on {cfg.eval_contexts} other held-out contexts."
        + contrast
    )
    return Section(
        key="steering",
        title=f"Steering: clamping a {r.word.strip()!r} feature (the Golden Gate experiment)",
        text=text,
        claims=merged,
        figures=[(f"Seed {r.seed}: the concept and the price against the clamp value", plot(r))],
        tables=[(f"Seed {r.seed}: the sweep", _table(r))],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m saescope.experiments.steering --run RUN --word WORD`: the sweep on a trained
    run; prints one JSON object (the result and its claims), writes the figure with --plot."""
    d = SteeringConfig()
    p = argparse.ArgumentParser(prog="python -m saescope.experiments.steering")
    p.add_argument("--run", required=True, help="a run folder (a TopK SAE on a residual layer)")
    p.add_argument("--sae", default=None, help="which SAE of a run of several (default: first)")
    p.add_argument("--word", default=d.word, help=f"the concept word (default {d.word!r})")
    p.add_argument("--pick", default=d.pick, choices=sorted(PICKS), help="see SteeringConfig")
    p.add_argument("--multiples", type=float, nargs="+", default=d.multiples)
    p.add_argument("--samples", type=int, default=d.samples, help="samples per prompt")
    p.add_argument("--new-tokens", type=int, default=d.new_tokens)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="a prompt (repeat; default: "
        "the experiment's neutral prompts, or with --chatml its neutral requests)",
    )
    p.add_argument("--chatml", action="store_true", help="wrap each prompt as a chat request")
    p.add_argument("--search-tokens", type=int, default=16_384)
    p.add_argument("--eval-contexts", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: as set)")
    p.add_argument("--plot", type=Path, default=None, help="write the two-panel figure here")
    ns = p.parse_args(argv)
    prompts = tuple(ns.prompt or (REQUESTS if ns.chatml else PROMPTS))
    cfg = SteeringConfig(
        prompts=tuple(CHATML.format(p) for p in prompts) if ns.chatml else prompts,
        word=ns.word,
        pick=ns.pick,
        multiples=tuple(ns.multiples),
        samples=ns.samples,
        new_tokens=ns.new_tokens,
        temperature=ns.temperature,
        search_tokens=ns.search_tokens,
        eval_contexts=ns.eval_contexts,
        threads=ns.threads,
    )
    try:
        result = from_run(ns.run, cfg, ns.sae)
    except SaescopeError as e:
        print(f"saescope: error: {e}", file=sys.stderr)
        return 2
    if ns.plot:
        save_figure(plot(result), ns.plot)
    out = {"settings": asdict(cfg), **asdict(result)}
    out["claims"] = [asdict(c) for c in claims(result, cfg)]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

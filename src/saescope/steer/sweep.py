"""Measuring an intervention, the numbers a steering sweep plots: on held-out text, the
next-token CE (the price) and a word's mean next-token probability; in generations from fixed
prompts at fixed seeds, how often the word appears (words of the decoded text that begin with
it, in any case: the concept rather than one token).

`Probe` holds what every measurement of a sweep shares (the model, the held-out contexts, the
word, the prompts and the clean baseline); `Probe.measure(interventions)` gives a `Point`.
`clamp_sweep` finds a word's feature (`search.token_features`) and measures it clamped (edit
mode "set") at increasing multiples of its maximum activation, as Templeton et al. (2024)
clamped the Golden Gate Bridge feature.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from saescope.data.outliers import OutlierRule
from saescope.models.downstream import batch_size_for, model_logits
from saescope.models.generate import generate
from saescope.saes import SAE
from saescope.steer.edits import Edit
from saescope.steer.effects import logit_effects
from saescope.steer.intervene import FeatureEdits, Intervention, steering
from saescope.steer.search import token_features, word_ids

PICKS = {
    "logit": "of the features that fire there, the one whose direct logit effect ranks the "
    "word highest",
    "activation": "the feature most specific to the word by its activation on it",
}
"""The rankings of `token_features` a sweep's feature may be the top of."""
OTHER = {"logit": "activation", "activation": "logit"}


@dataclass
class Point:
    """What one intervention (none: the clean model) did. value / multiple: the clamp, as
    the caller labels it."""

    ce: float
    """Mean next-token CE on the held-out contexts (nats)."""
    p_word: float
    """The word's mean next-token probability on the held-out contexts."""
    raised: float
    """The fraction of held-out contexts on which the watched token's mean next-token
    probability rose against the clean model (0 for the clean model)."""
    rate: float
    """Mentions of the word per generated token (words beginning with it, in any case)."""
    samples_with: float
    """The fraction of generated samples mentioning the word."""
    example: str
    """The first prompt's first sample."""
    value: float = 0.0
    multiple: float | None = None


@torch.no_grad()
def held_out(
    model: nn.Module, contexts: Tensor, ivs: Sequence[Intervention], word: int, watch: int
) -> tuple[float, float, Tensor]:
    """(mean CE, mean p(word), per-context mean p(watch)) over the predictions from position 1
    on (position 0 is never edited), with the interventions applied."""
    size = batch_size_for(contexts.shape[1], model_logits(model, contexts[:1, :2]).shape[-1])
    ce = p_word = 0.0
    p_watch = []
    for i in range(0, contexts.shape[0], size):
        ids = contexts[i : i + size]
        with steering(model, list(ivs)):
            logp = model_logits(model, ids)[:, 1:-1].float().log_softmax(-1)  # (B, T - 2, vocab)
        ce -= float(logp.gather(-1, ids[:, 2:, None]).sum())
        p_word += float(logp[..., word].exp().sum())
        p_watch.append(logp[..., watch].exp().mean(1))
    n = contexts.shape[0] * (contexts.shape[1] - 2)
    return ce / n, p_word / n, torch.cat(p_watch)


@dataclass
class Probe:
    """A sweep's shared setting: the model, held-out contexts (n, T), the word, the token
    whose probability is watched, and the generations (prompts x samples x new_tokens at
    `temperature`; the same seeds for every measurement)."""

    model: nn.Module
    tokenizer: Any
    contexts: Tensor
    word: str
    watch: int
    prompts: Sequence[str]
    samples: int = 4
    new_tokens: int = 32
    temperature: float = 1.0
    seed: int = 1000
    ids: list[int] = field(init=False)
    _clean_watch: Tensor | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.ids = word_ids(self.tokenizer, self.word)

    def mentions(self, text: str) -> int:
        """How many words of the text begin with the word, in any case ("King" counts
        "king", "Kings" and "Kingdom"; " love" counts "Love" and "lovely")."""
        stem = re.escape(self.word.strip())
        return len(re.findall(rf"\b{stem}", text, flags=re.IGNORECASE))

    @torch.no_grad()
    def generations(self, ivs: Sequence[Intervention]) -> tuple[float, float, str]:
        """(mentions of the word per generated token, fraction of samples mentioning it, the
        first sample's text) with the interventions applied. Prompts of the same length in
        tokens run as one batch (seeded by the first of them)."""
        groups: dict[int, list[list[int]]] = {}
        for prompt in self.prompts:
            ids = self.tokenizer.encode(prompt)
            groups.setdefault(len(ids), []).append(ids)
        hits = tokens = holding = 0
        example = ""
        for i, (length, prompts) in enumerate(groups.items()):
            ids = torch.tensor(prompts).repeat_interleave(self.samples, 0)
            with steering(self.model, list(ivs)):
                out = generate(
                    self.model, ids, self.new_tokens, self.temperature, seed=self.seed + i
                )
            for row in out[:, length:].tolist():
                found = self.mentions(self.tokenizer.decode(row))
                hits += found
                holding += found > 0
                tokens += len(row)
            example = example or self.tokenizer.decode(out[0].tolist())
        return hits / max(1, tokens), holding / (self.samples * len(self.prompts)), example

    def measure(self, ivs: Sequence[Intervention] = ()) -> Point:
        """Every number of a `Point` with the interventions applied (none: the clean model,
        which the first call without interventions records as the baseline)."""
        ce, p_word, p_watch = held_out(self.model, self.contexts, ivs, self.ids[0], self.watch)
        if not ivs and self._clean_watch is None:
            self._clean_watch = p_watch
        if self._clean_watch is None:
            self._clean_watch = held_out(self.model, self.contexts, (), self.ids[0], self.watch)[2]
        raised = float((p_watch > self._clean_watch).float().mean()) if ivs else 0.0
        rate, holding, example = self.generations(ivs)
        return Point(ce, p_word, raised, rate, holding, example)


@dataclass
class Sweep:
    """A clamp sweep: the feature picked for the word (the top of the `pick` ranking), each
    clamp's `Point`, the clean model's, and the other ranking's top feature clamped at the
    highest multiple (`contrast`). seed and explained_variance: what the caller records."""

    word: str
    hook: str
    pick: str
    feature: int
    max_act: float
    """The feature's maximum activation on the searched contexts (the unit of the clamps)."""
    logit_rank: int
    """The word's rank among the feature's direct logits (1: top)."""
    score: float
    """The feature's activation score on the word (see `search`)."""
    top_token: str
    """The feature's top direct-logit token: `Point.raised` watches its probability."""
    top_tokens: list[str]
    contrast_feature: int
    clean: Point
    points: list[Point]
    contrast: Point
    seed: int = 0
    explained_variance: float | None = None


def clamp_sweep(
    sae: SAE,
    model: nn.Module,
    tokenizer: Any,
    hook: str,
    word: str,
    search: Tensor,
    evaluate: Tensor,
    multiples: Sequence[float],
    prompts: Sequence[str],
    samples: int = 4,
    new_tokens: int = 32,
    temperature: float = 1.0,
    pick: str = "logit",
    outliers: OutlierRule | None = None,
) -> Sweep:
    """Pick the word's feature in the `search` contexts, then measure it clamped at each
    multiple of its maximum activation there (on every position but the first, the SAE's
    error term kept): CE and p(word) on the `evaluate` contexts, and generations (see
    `Probe`)."""
    found = token_features(sae, model, tokenizer, hook, search, word, 5, outliers)
    ranked = {"logit": found.by_logit[0], "activation": found.by_activation[0]}
    chosen, other = ranked[pick], ranked[OTHER[pick]]
    effect = logit_effects(sae, model, [chosen.feature], k=5)[0]
    top = effect.top[0][0]
    probe = Probe(model, tokenizer, evaluate, word, top, prompts, samples, new_tokens, temperature)

    def clamp(feature: int, multiple: float, max_act: float) -> Point:
        edit = Edit(feature, float(multiple * max_act))
        ivs = [FeatureEdits(hook, sae=sae, edits=[edit], outliers=outliers)]
        return replace(probe.measure(ivs), value=edit.value, multiple=multiple)

    clean = probe.measure()
    return Sweep(
        word=word,
        hook=hook,
        pick=pick,
        feature=chosen.feature,
        max_act=chosen.max_act,
        logit_rank=chosen.logit_rank or 0,
        score=chosen.score,
        top_token=tokenizer.decode([top]),
        top_tokens=[tokenizer.decode([t]) for t, _ in effect.top],
        contrast_feature=other.feature,
        clean=clean,
        points=[clamp(chosen.feature, m, chosen.max_act) for m in multiples],
        contrast=clamp(other.feature, max(multiples), other.max_act),
    )

"""Finding features: those most specific to a token or word, and the most active ones.

`token_features` streams contexts through the model in batches (an observer at the SAE's hook,
position 0 dropped as harvest drops it, outlier tokens set aside), encodes each batch with the
SAE and keeps only per-feature sums, so memory is bounded by one batch, not the tokens. A
position is "on" the word when the text's tokens there end with the word's tokens (a word of
several tokens is found at its last token). Two rankings:

- by activation: score = 2 P R / (P + R), the harmonic mean of the share of the feature's
  activation mass that falls on the word (P) and the fraction of the word's occurrences where
  the feature fires (R): 1 for a feature that fires on every occurrence and nowhere else;
- by logit effect: the direct logit effect of the feature's decoder row on the word's first
  token (`effects.direct_logits`), among features that fired at least once.

`top_features` ranks features without a word: by mean activation over every position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from saescope.data.outliers import OutlierRule
from saescope.errors import ConfigError, InputError
from saescope.models.harvest import harvest
from saescope.runs import Run
from saescope.saes import SAE
from saescope.steer.effects import direct_logits, logit_effects

LOGIT_CHUNK = 256
"""Features whose direct logits are computed at once ((chunk, vocab) floats)."""


@dataclass(frozen=True)
class FeatureScore:
    """One feature measured against a word. mean_on / mean_off: its mean activation at the
    word's positions / everywhere else; precision: of the positions where it fires, the
    fraction on the word; recall: of the word's positions, the fraction where it fires;
    share: the fraction of its activation mass on the word; score: 2 share recall / (share +
    recall); logit: its direct logit effect on the word's first token per unit of activation,
    logit_rank that token's rank among its direct logits (1: the token it promotes most)."""

    feature: int
    score: float
    mean_on: float
    mean_off: float
    precision: float
    recall: float
    share: float
    density: float
    max_act: float
    logit: float | None = None
    logit_rank: int | None = None


@dataclass(frozen=True)
class TokenFeatures:
    """The features most specific to `word` (tokens `ids`, found `occurrences` times in
    `positions` positions), ranked by activation and by logit effect (empty for a model
    without an unembedding)."""

    word: str
    ids: list[int]
    occurrences: int
    positions: int
    by_activation: list[FeatureScore]
    by_logit: list[FeatureScore]


@dataclass(frozen=True)
class FeatureActivity:
    """A feature's activity over the contexts: its mean activation over every position, the
    fraction of positions where it fires, its mean where it fires, and its maximum."""

    feature: int
    mean: float
    density: float
    mean_active: float
    max_act: float


@dataclass
class _Sums:
    """Per-feature sums over the streamed positions (float64, (d_sae,) each)."""

    total: Tensor
    fired: Tensor
    on: Tensor
    fired_on: Tensor
    max_act: Tensor
    n: int = 0
    n_on: int = 0

    @classmethod
    def zeros(cls, d_sae: int) -> _Sums:
        z = [torch.zeros(d_sae, dtype=torch.float64) for _ in range(5)]
        return cls(*z)

    def add(self, f: Tensor, on: Tensor) -> None:
        """f (n, d_sae) activations, on (n,) bool: the rows on the word."""
        fires = f > 0
        self.total += f.sum(0, dtype=torch.float64)
        self.fired += fires.sum(0)
        self.on += f[on].sum(0, dtype=torch.float64)
        self.fired_on += fires[on].sum(0)
        if f.shape[0]:
            self.max_act = torch.maximum(self.max_act, f.max(0).values.double())
        self.n += f.shape[0]
        self.n_on += int(on.sum())


def word_ids(tokenizer: Any, word: str) -> list[int]:
    """The word's token ids; a one-line error when the tokenizer cannot write it."""
    if not word:
        raise InputError("the token to search for is empty; give a word, e.g. ' Queen'")
    ids = list(tokenizer.encode(word))
    if not ids or tokenizer.decode(ids) != word:
        raise InputError(
            f"{word!r} is not in the tokenizer's text (it decodes back as "
            f"{tokenizer.decode(ids)!r}); give a word the model can write"
        )
    return ids


def word_positions(contexts: Tensor, ids: Sequence[int]) -> Tensor:
    """(B, T) bool: the positions where the contexts' tokens end with `ids` (the last token
    of each occurrence of a word of several tokens)."""
    n = len(ids)
    hit = torch.zeros_like(contexts, dtype=torch.bool)
    if contexts.shape[1] < n:
        return hit
    run = torch.ones_like(contexts[:, n - 1 :], dtype=torch.bool)
    for j, t in enumerate(ids):
        run &= contexts[:, j : contexts.shape[1] - n + 1 + j] == t
    hit[:, n - 1 :] = run
    return hit


def _stream(
    sae: SAE,
    model: nn.Module,
    hook: str,
    contexts: Tensor,
    hit: Tensor,
    outliers: OutlierRule | None,
    batch_size: int,
) -> _Sums:
    """The per-feature sums over every context's positions but the first."""
    sums = _Sums.zeros(sae.cfg.d_sae)
    p = sae.W_dec
    with torch.no_grad():
        for got in harvest(model, contexts, [hook], batch_size):
            x = got[hook]
            if x.shape[1] != sae.cfg.d_in:
                raise InputError(
                    f"the SAE takes d_in {sae.cfg.d_in} but hook {hook} has width "
                    f"{x.shape[1]}; give the hook the SAE was trained on"
                )
            on = hit[got["contexts"], got["positions"]]
            if outliers is not None:
                keep = outliers.keep(x, x)
                x, on = x[keep], on[keep]
            sums.add(sae.encode(x.to(p.device, p.dtype)).cpu(), on)
    return sums


def _check_contexts(contexts: Tensor) -> None:
    if contexts.dim() != 2 or contexts.shape[0] == 0 or contexts.shape[1] < 2:
        raise InputError(
            f"contexts must be (n, positions) token ids with n >= 1 and at least 2 positions, "
            f"got {tuple(contexts.shape)}"
        )


def _logit_column(sae: SAE, model: nn.Module, token: int) -> tuple[Tensor, Tensor] | None:
    """(value (d_sae,), rank (d_sae,)): each feature's direct logit on `token` and that
    token's rank among its direct logits (1: top), chunk by chunk; None for a model without an
    unembedding or an SAE off the residual stream's width."""
    values, ranks = [], []
    try:
        for start in range(0, sae.cfg.d_sae, LOGIT_CHUNK):
            ids = range(start, min(start + LOGIT_CHUNK, sae.cfg.d_sae))
            logits = direct_logits(sae, model, ids)  # (chunk, vocab)
            v = logits[:, token]
            values.append(v)
            ranks.append((logits > v[:, None]).sum(1) + 1)
    except (ConfigError, InputError):
        return None
    return torch.cat(values).cpu(), torch.cat(ranks).cpu()


def _score(s: _Sums, i: int, logit: tuple[Tensor, Tensor] | None) -> FeatureScore:
    total, on, fired, fired_on = (float(t[i]) for t in (s.total, s.on, s.fired, s.fired_on))
    share = on / total if total > 0 else 0.0
    recall = fired_on / s.n_on
    n_off = s.n - s.n_on
    return FeatureScore(
        feature=i,
        score=2 * share * recall / (share + recall) if share + recall > 0 else 0.0,
        mean_on=on / s.n_on,
        mean_off=(total - on) / n_off if n_off else 0.0,
        precision=fired_on / fired if fired else 0.0,
        recall=recall,
        share=share,
        density=fired / s.n,
        max_act=float(s.max_act[i]),
        logit=None if logit is None else float(logit[0][i]),
        logit_rank=None if logit is None else int(logit[1][i]),
    )


def token_features(
    sae: SAE,
    model: nn.Module,
    tokenizer: Any,
    hook: str,
    contexts: Tensor,
    token: str,
    top: int = 10,
    outliers: OutlierRule | None = None,
    batch_size: int = 32,
) -> TokenFeatures:
    """The `top` features most specific to `token` (a word, e.g. " Queen") over the contexts
    (n, T), by activation and by logit effect (see the module's docstring)."""
    _check_contexts(contexts)
    ids = word_ids(tokenizer, token)
    hit = word_positions(contexts, ids)
    hit[:, 0] = False  # position 0 is dropped, as harvest drops it
    if not hit.any():
        raise InputError(
            f"{token!r} never occurs in the {contexts.shape[0]} contexts searched; give more "
            "tokens or another word"
        )
    sums = _stream(sae, model, hook, contexts, hit, outliers, batch_size)
    if sums.n_on == 0:
        raise InputError(f"every occurrence of {token!r} was set aside as an outlier token")
    logit = _logit_column(sae, model, ids[0])
    share = torch.where(sums.total > 0, sums.on / sums.total.clamp_min(1e-300), 0.0)
    recall = sums.fired_on / sums.n_on
    scores = torch.where(share + recall > 0, 2 * share * recall / (share + recall + 1e-300), 0.0)
    k = min(top, sae.cfg.d_sae)
    by_act = [_score(sums, int(i), logit) for i in torch.topk(scores, k).indices]
    by_logit: list[FeatureScore] = []
    if logit is not None:
        alive = (sums.fired > 0).nonzero().flatten()
        # the word's rank among the feature's direct logits first, then the logit's size
        by_value = alive[torch.argsort(logit[0][alive], descending=True, stable=True)]
        order = by_value[torch.argsort(logit[1][by_value], stable=True)][:k]
        by_logit = [_score(sums, int(i), logit) for i in order]
    return TokenFeatures(token, ids, int(hit.sum()), sums.n, by_act, by_logit)


def top_features(
    sae: SAE,
    model: nn.Module,
    hook: str,
    contexts: Tensor,
    top: int = 10,
    outliers: OutlierRule | None = None,
    batch_size: int = 32,
) -> list[FeatureActivity]:
    """The `top` most active features over the contexts (by mean activation over every
    position but the first)."""
    _check_contexts(contexts)
    hit = torch.zeros_like(contexts, dtype=torch.bool)
    s = _stream(sae, model, hook, contexts, hit, outliers, batch_size)
    if s.n == 0:
        raise InputError("every token was set aside as an outlier token; nothing to rank")
    order = torch.topk(s.total, min(top, sae.cfg.d_sae)).indices
    return [
        FeatureActivity(
            feature=int(i),
            mean=float(s.total[i]) / s.n,
            density=float(s.fired[i]) / s.n,
            mean_active=float(s.total[i] / s.fired[i]) if s.fired[i] > 0 else 0.0,
            max_act=float(s.max_act[i]),
        )
        for i in order
    ]


def top_tokens(
    sae: SAE, model: nn.Module, tokenizer: Any, features: Sequence[int], k: int = 5
) -> dict[int, list[str]]:
    """Each feature's k top direct-logit tokens, decoded (empty for a model without an
    unembedding, such as an encoder)."""
    try:
        effects = logit_effects(sae, model, list(features), k)
    except (ConfigError, InputError):
        return {}
    return {e.feature: [tokenizer.decode([t]) for t, _ in e.top] for e in effects}


def search_run(
    run: Run,
    top: int = 10,
    token: str | None = None,
    tokens: int = 65_536,
    sae: str | None = None,
) -> dict[str, Any]:
    """`saescope features`: the run's features most specific to `token` (or, without one,
    the most active), on about `tokens` held-out tokens, as JSON values: the search's numbers
    plus each feature's top direct-logit tokens."""
    if top < 1:
        raise ConfigError(f"--top must be at least 1, got {top}")
    name, chosen = run.sae(sae)
    contexts = run.held_out_contexts(tokens)
    assert run.data is not None
    model, tokenizer = run.data.load_model()
    picked, hook, rule = chosen.eval(), run.data.hooks.x, run.outlier_rule
    out: dict[str, Any] = {"run": str(run.path), "sae": name, "hook": hook}
    out["contexts"] = int(contexts.shape[0])
    if token is None:
        found = top_features(picked, model, hook, contexts, top, rule)
        names = top_tokens(picked, model, tokenizer, [f.feature for f in found])
        out["features"] = [{**asdict(f), "top_tokens": names.get(f.feature)} for f in found]
        return out
    got = token_features(picked, model, tokenizer, hook, contexts, token, top, rule)
    ids = {f.feature for f in got.by_activation + got.by_logit}
    names = top_tokens(picked, model, tokenizer, sorted(ids))
    out.update(token=token, ids=got.ids, occurrences=got.occurrences, positions=got.positions)
    for key in ("by_activation", "by_logit"):
        rows = getattr(got, key)
        out[key] = [{**asdict(f), "top_tokens": names.get(f.feature)} for f in rows]
    return out

"""From a finished build's state to the rows of the index: per feature its numbers and page
(histogram, intervals, logit tokens, co-firing features, neighbours) and its examples (the
top ones and the interval samples), each a window of token ids and activations.

An example's window runs `before` tokens before its token to `after` after, cut at the
context's ends; its "max" is the activation at its token ("at" in the window), the largest of
its context for a top example."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saescope.analysis.build import IndexState
from saescope.analysis.relations import Ranked


@dataclass
class Relations:
    """What `relations` computed: neighbours, co-firing and (for an LM) direct logits."""

    neighbours: Ranked
    cofiring: Ranked
    logits: tuple[Ranked, Ranked] | None


@dataclass
class FeatureRows:
    """One feature's rows: `feature` (id, density, max_act, mean_act, fired, page dict),
    `examples` (slot, kind, example, position, at, max, token ids, acts), `peaks` {token id:
    [acts]}."""

    feature: tuple[int, float, float, float, int, dict[str, Any]]
    examples: list[tuple[int, int, int, int, int, float, np.ndarray, np.ndarray]]
    peaks: dict[int, list[float]]


class Windows:
    """Token windows of examples: `tokens(keys)` (n, width) ids (-1 off the context)."""

    def __init__(self, contexts: Tensor, before: int, after: int) -> None:
        self.contexts, self.positions = contexts, contexts.shape[1]
        self.offs = torch.arange(-before, after + 1)
        self.before = before

    def tokens(self, keys: Tensor) -> Tensor:
        ctx, pos = keys // self.positions, keys % self.positions
        p = pos[:, None] + self.offs
        inside = (p >= 0) & (p < self.positions)
        got = self.contexts[ctx[:, None].expand_as(p), p.clamp(0, self.positions - 1)]
        return torch.where(inside, got, -1)


def _histogram(counts: np.ndarray, edges: np.ndarray, shown: int, top: float) -> dict:
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        return {"edges": [], "counts": []}
    a, b = int(nz[0]), int(nz[-1]) + 1
    m = -(-(b - a) // shown)
    starts = np.arange(a, b, m)
    c = np.add.reduceat(counts[a:b], starts - a)
    e = edges[np.append(starts, min(b, starts[-1] + m))].astype(float)
    e[-1] = min(e[-1], top)
    return {"edges": e.tolist(), "counts": c.tolist()}


def _ranked(r: Ranked, i: int, key: str) -> list[dict[str, Any]]:
    ids, vals = r[0][i].tolist(), r[1][i].tolist()
    return [{"feature": j, key: v} for j, v in zip(ids, vals, strict=True) if j >= 0]


@dataclass
class Examples:
    """Every example of every feature, sorted by feature then slot: feature, slot, kind (0:
    top, j + 1: interval j), key (its token's place in the text), max (the activation at its
    token) (E,) each; acts (E, width) its window's activations; intervals (d_sae, intervals, 2)
    each interval's [lo, hi] (NaN: none)."""

    feature: Tensor
    slot: Tensor
    kind: Tensor
    key: Tensor
    max: Tensor
    acts: Tensor
    intervals: Tensor


SLOTS = 100_000
"""An example's slot is kind x SLOTS + its rank in its kind."""


def examples(state: IndexState) -> Examples:
    """The top examples and the intervals' samples of every feature, at once (see
    `Examples`): a feature's non-empty activation buckets split into at most cfg.intervals
    runs of near-equal length, strongest first; per run the cfg.interval_examples samples of
    highest priority (a uniform sample), strongest first."""
    cfg, top, bk = state.cfg, state.top, state.buckets
    d, nb, s = state.d_sae, cfg.buckets, cfg.samples
    f_top, r_top = (top.key >= 0).nonzero(as_tuple=True)
    full = torch.isfinite(bk.score.view(d, nb, s)).any(2)  # (d_sae, buckets)
    n = full.sum(1, keepdim=True)
    parts = n.clamp(max=cfg.intervals)
    run = (full.cumsum(1) - 1) * parts // n.clamp_min(1)  # run of each bucket, weakest 0
    kind = torch.where(full, parts - run, 0)  # 1: the strongest run
    low = torch.pow(2.0, cfg.low + torch.arange(nb + 1, dtype=torch.float64))
    low[0], low[-1] = 0.0, torch.inf
    span = torch.full((d, cfg.intervals + 1, 2), torch.nan, dtype=torch.float64)
    lo_b = torch.where(full, low[:-1], torch.inf)
    hi_b = torch.where(full, low[1:], -torch.inf)
    g = kind.clamp_min(0)
    span[..., 0] = torch.full_like(span[..., 0], torch.inf).scatter_reduce(1, g, lo_b, "amin")
    span[..., 1] = torch.full_like(span[..., 1], -torch.inf).scatter_reduce(1, g, hi_b, "amax")
    span[..., 1] = torch.minimum(span[..., 1], state.stats.max.double()[:, None])
    span = span[:, 1:]
    span[~torch.isfinite(span[..., 0])] = torch.nan
    # the samples: group (feature, kind), best priority first, at most interval_examples
    prio = bk.score.view(d, nb, s)
    f_i, b_i, s_i = torch.isfinite(prio).nonzero(as_tuple=True)
    grp = f_i * (cfg.intervals + 1) + kind[f_i, b_i]
    p = prio[f_i, b_i, s_i]
    order = torch.argsort(p, descending=True, stable=True)
    order = order[torch.argsort(grp[order], stable=True)]
    rank = _rank(grp[order])
    order = order[rank < cfg.interval_examples]
    f_i, b_i, s_i = f_i[order], b_i[order], s_i[order]
    flat = (f_i * nb + b_i) * s + s_i
    acts_i = bk.acts.view(d * nb * s, -1)[flat]
    at_i = acts_i[:, cfg.before].double()
    grp = grp[order]
    order = torch.argsort(at_i, descending=True, stable=True)
    order = order[torch.argsort(grp[order], stable=True)]
    feature = torch.cat([f_top, f_i[order]])
    kinds = torch.cat([torch.zeros_like(f_top), kind[f_i, b_i][order]])
    slot = kinds * SLOTS + torch.cat([r_top, _rank(grp[order])])
    keys = torch.cat([top.key[f_top, r_top], bk.key.view(-1)[flat][order]])
    acts = torch.cat([top.acts[f_top, r_top], acts_i[order]])
    by = torch.argsort(slot, stable=True)
    by = by[torch.argsort(feature[by], stable=True)]
    mx = acts[by, cfg.before]
    return Examples(feature[by], slot[by], kinds[by], keys[by], mx, acts[by], span)


def _rank(sorted_groups: Tensor) -> Tensor:
    """Each item's rank within its run of equal values."""
    _, counts = torch.unique_consecutive(sorted_groups, return_counts=True)
    starts = counts.cumsum(0) - counts
    return torch.arange(sorted_groups.numel()) - torch.repeat_interleave(starts, counts)


def feature_rows(state: IndexState, contexts: Tensor, rel: Relations) -> Iterator[FeatureRows]:
    """Every feature's rows, in feature order."""
    cfg, s = state.cfg, state.stats
    win = Windows(contexts, cfg.before, cfg.after)
    ex = examples(state)
    toks = win.tokens(ex.key).numpy()
    inside = toks >= 0
    at = (cfg.before - (~inside[:, : cfg.before]).sum(1)).tolist()
    ctx = (ex.key // win.positions).tolist()
    pos = (ex.key % win.positions).tolist()
    acts, mx, kind, slot = ex.acts.numpy(), ex.max.tolist(), ex.kind.tolist(), ex.slot.tolist()
    bounds = torch.searchsorted(ex.feature, torch.arange(state.d_sae + 1)).tolist()
    edges, hist = s.edges().numpy(), s.hist.numpy()
    n_tok = max(state.tokens, 1)
    fired_all, max_all, total = s.fired.tolist(), s.max.tolist(), s.total.tolist()
    spans = ex.intervals.tolist()
    for i in range(state.d_sae):
        fired, top_act = fired_all[i], max_all[i]
        rows, peaks = [], {}
        for e in range(bounds[i], bounds[i + 1]):
            m = inside[e]
            t = toks[e][m].astype(np.int32)
            rows.append((slot[e], kind[e], ctx[e], pos[e], at[e], mx[e], t, acts[e][m]))
            if kind[e] == 0:
                peaks.setdefault(int(toks[e, cfg.before]), []).append(mx[e])
        page: dict[str, Any] = {
            "histogram": _histogram(hist[i], edges, cfg.hist_shown, top_act),
            "intervals": [sp for sp in spans[i] if sp[0] == sp[0]],
            "cofiring": _ranked(rel.cofiring, i, "score"),
            "neighbours": _ranked(rel.neighbours, i, "cosine"),
            "logits": None,
        }
        if rel.logits is not None:
            (ti, tv), (bi, bv) = rel.logits
            page["logits"] = {"top": [ti[i].tolist(), tv[i].tolist()]}
            page["logits"]["bottom"] = [bi[i].tolist(), bv[i].tolist()]
        mean = total[i] / fired if fired else 0.0
        yield FeatureRows((i, fired / n_tok, top_act, mean, fired, page), rows, peaks)

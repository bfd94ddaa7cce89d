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
    `examples` (slot, kind, example, at, max, token ids, acts), `peaks` {token id: [acts]}."""

    feature: tuple[int, float, float, float, int, dict[str, Any]]
    examples: list[tuple[int, int, int, int, float, np.ndarray, np.ndarray]]
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


def _split(n: int, parts: int) -> list[range]:
    """n consecutive items in at most `parts` runs of near-equal length."""
    parts = min(parts, n)
    if parts == 0:
        return []
    cuts = [round(n * j / parts) for j in range(parts + 1)]
    return [range(cuts[j], cuts[j + 1]) for j in range(parts)]


def feature_rows(state: IndexState, contexts: Tensor, rel: Relations) -> Iterator[FeatureRows]:
    """Every feature's rows, in feature order."""
    cfg, s = state.cfg, state.stats
    win = Windows(contexts, cfg.before, cfg.after)
    edges = s.edges().numpy()
    hist = s.hist.numpy()
    n_tok = max(state.tokens, 1)
    bucket_low = [2.0 ** (cfg.low + b) for b in range(cfg.buckets + 1)]
    bucket_low[0] = 0.0
    for i in range(state.d_sae):
        fired, top_act = int(s.fired[i]), float(s.max[i])
        examples: list = []
        peaks: dict[int, list[float]] = {}
        keys = state.top.key[i]
        n_top = int((keys >= 0).sum())
        toks = win.tokens(keys[:n_top]).numpy()
        acts = state.top.acts[i, :n_top].numpy()
        for slot in range(n_top):
            act = float(acts[slot, cfg.before])
            examples.append(_example(slot, 0, int(keys[slot]), toks[slot], acts[slot], act, win))
            peaks.setdefault(int(toks[slot, cfg.before]), []).append(act)
        intervals = _intervals(state, i, win, examples, bucket_low, top_act)
        page: dict[str, Any] = {
            "histogram": _histogram(hist[i], edges, cfg.hist_shown, top_act),
            "intervals": intervals,
            "cofiring": _ranked(rel.cofiring, i, "score"),
            "neighbours": _ranked(rel.neighbours, i, "cosine"),
            "logits": None,
        }
        if rel.logits is not None:
            (ti, tv), (bi, bv) = rel.logits
            page["logits"] = {"top": [ti[i].tolist(), tv[i].tolist()]}
            page["logits"]["bottom"] = [bi[i].tolist(), bv[i].tolist()]
        mean = float(s.total[i]) / fired if fired else 0.0
        yield FeatureRows((i, fired / n_tok, top_act, mean, fired, page), examples, peaks)


def _example(slot, kind, key, toks, acts, act, win: Windows) -> tuple:
    inside = toks >= 0
    at = win.before - int((~inside[: win.before]).sum())
    ctx = key // win.positions
    return (
        slot,
        kind,
        ctx,
        at,
        act,
        toks[inside].astype(np.int32),
        acts[inside].astype(np.float32),
    )


def _intervals(state: IndexState, i: int, win: Windows, examples: list, low: list, top: float):
    """The feature's non-empty activation buckets in at most cfg.intervals runs, strongest
    first: [lo, hi] each; their sampled examples are appended to `examples` (kind j + 1)."""
    cfg = state.cfg
    nb = cfg.buckets
    score = state.buckets.score[i * nb : (i + 1) * nb]  # (buckets, samples) priorities
    full = torch.isfinite(score).any(1).nonzero().flatten().tolist()
    out = []
    for j, run in enumerate(reversed(_split(len(full), cfg.intervals))):
        bs = [full[r] for r in run]
        lo, hi = low[bs[0]], min(top, low[bs[-1] + 1] if bs[-1] + 1 < nb else top)
        g = torch.tensor(bs) + i * nb
        pr, keys = state.buckets.score[g].flatten(), state.buckets.key[g].flatten()
        acts = state.buckets.acts[g].flatten(0, 1)
        pick = torch.argsort(pr, descending=True, stable=True)[: cfg.interval_examples]
        pick = pick[torch.isfinite(pr[pick])]
        at_act = acts[pick, cfg.before]
        pick = pick[torch.argsort(at_act, descending=True, stable=True)]
        toks = win.tokens(keys[pick]).numpy()
        a = acts[pick].numpy()
        base = len(examples)
        for n, p in enumerate(pick.tolist()):
            act = float(acts[p, cfg.before])
            examples.append(_example(base + n, j + 1, int(keys[p]), toks[n], a[n], act, win))
        out.append([lo, hi])
    return out

"""The streaming accumulators of the feature index, each bounded in memory whatever the tokens:

- `Stats`: per feature, how often it fires, the sum and maximum of its activations, and a
  histogram over fixed log-spaced bins;
- `GroupTop`: per group (a feature, or a feature's activation bucket), the items of highest
  score seen, at most one per context, each with a window of the feature's activations;
- `RowSample`: a uniform sample of tokens' active sets (for co-firing), the tokens of smallest
  hash priority.

Sampling uses a hash of each token's position in the text (`priority`), not a random
generator, so a build resumed from a checkpoint draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def priority(keys: Tensor, salt: int = 0) -> Tensor:
    """(n,) float64 in [0, 1): splitmix64 of int64 keys (and a salt), a fixed pseudo-random
    number per key."""
    offset = ((salt + 1) * _MIX[0]) & 0xFFFFFFFFFFFFFFFF
    z = keys.numpy().astype(np.uint64) + np.uint64(offset)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX[1])
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX[2])
    z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) / float(2**53))


def log2_bins(values: Tensor, low: float, per_unit: float, n: int) -> Tensor:
    """(m,) int64: the bin of each positive value on a log2 grid starting at 2^low with
    per_unit bins per octave, clamped to [0, n)."""
    b = torch.floor((torch.log2(values.double()) - low) * per_unit)
    return b.clamp(0, n - 1).long()


class Stats:
    """Per feature: firings, activation sum (float64) and maximum, and a histogram of the
    activations over `bins` log-spaced bins from 2^low to 2^-low."""

    def __init__(self, d_sae: int, bins: int, low: int) -> None:
        self.fired = torch.zeros(d_sae, dtype=torch.int64)
        self.total = torch.zeros(d_sae, dtype=torch.float64)
        self.max = torch.zeros(d_sae, dtype=torch.float32)
        self.hist = torch.zeros(d_sae, bins, dtype=torch.int64)
        self.low, self.per_unit = low, bins / (-2 * low)

    def add(self, feats: Tensor, values: Tensor) -> None:
        """feats, values (m,): one entry per non-zero activation."""
        d_sae, bins = self.hist.shape
        self.fired += torch.bincount(feats, minlength=d_sae)
        self.total.index_add_(0, feats, values.double())
        self.max.scatter_reduce_(0, feats, values.float(), "amax")
        b = log2_bins(values, self.low, self.per_unit, bins)
        self.hist.view(-1).index_add_(0, feats * bins + b, torch.ones_like(b))

    def edges(self) -> Tensor:
        """(bins + 1,) the histogram's bin edges (the first 0, the last the largest float)."""
        bins = self.hist.shape[1]
        e = torch.pow(2.0, self.low + torch.arange(bins + 1, dtype=torch.float64) / self.per_unit)
        e[0], e[-1] = 0.0, math.inf
        return e

    def state(self) -> dict[str, Tensor]:
        return {"fired": self.fired, "total": self.total, "max": self.max, "hist": self.hist}

    def load(self, s: dict[str, Tensor]) -> None:
        self.fired, self.total, self.max, self.hist = s["fired"], s["total"], s["max"], s["hist"]


class GroupTop:
    """Per group, the `k` items of highest score seen, at most one per context (its best),
    best first: `score` (groups, k) float64 (-inf: empty), `key` (groups, k) int64 (the
    item's token key, -1: empty) and `acts` (groups, k, width) float32."""

    def __init__(self, groups: int, k: int, width: int) -> None:
        self.score = torch.full((groups, k), -math.inf, dtype=torch.float64)
        self.key = torch.full((groups, k), -1, dtype=torch.int64)
        self.acts = torch.zeros(groups, k, width, dtype=torch.float32)

    def offer(self, group: Tensor, score: Tensor, key: Tensor, ctx: Tensor, windows) -> None:
        """Candidates (c,) each: group, score, token key and context; windows(idx) gives the
        (len(idx), width) activations of the candidates at idx (asked only of those kept)."""
        k = self.score.shape[1]
        idx = (score > self.score[group, -1]).nonzero().flatten()
        if idx.numel() == 0:
            return
        idx = _best_per_context(idx, group, score, ctx)
        g = group[idx]
        order = torch.argsort(score[idx], descending=True, stable=True)
        order = order[torch.argsort(g[order], stable=True)]
        idx, g = idx[order], g[order]
        u, inv, counts = torch.unique_consecutive(g, return_inverse=True, return_counts=True)
        rank = torch.arange(g.numel()) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        keep = rank < k
        idx, inv, rank = idx[keep], inv[keep], rank[keep]
        sc = torch.full((u.numel(), 2 * k), -math.inf, dtype=torch.float64)
        sc[:, :k] = self.score[u]
        sc[inv, k + rank] = score[idx].double()
        keys = torch.cat([self.key[u], torch.full_like(self.key[u], -1)], 1)
        keys[inv, k + rank] = key[idx]
        acts = torch.cat([self.acts[u], torch.zeros_like(self.acts[u])], 1)
        acts[inv, k + rank] = windows(idx)
        best = torch.topk(sc, k, dim=1).indices  # sorted, best first
        self.score[u] = sc.gather(1, best)
        self.key[u] = keys.gather(1, best)
        self.acts[u] = acts.gather(1, best[..., None].expand(-1, -1, acts.shape[2]))

    def state(self, prefix: str) -> dict[str, Tensor]:
        return {
            f"{prefix}.score": self.score,
            f"{prefix}.key": self.key,
            f"{prefix}.acts": self.acts,
        }

    def load(self, s: dict[str, Tensor], prefix: str) -> None:
        self.score, self.key, self.acts = (s[f"{prefix}.{n}"] for n in ("score", "key", "acts"))


def _best_per_context(idx: Tensor, group: Tensor, score: Tensor, ctx: Tensor) -> Tensor:
    """The candidates of idx that are the best of their (group, context) (the first on ties)."""
    order = torch.argsort(score[idx], descending=True, stable=True)
    order = order[torch.argsort(ctx[idx][order], stable=True)]
    order = order[torch.argsort(group[idx][order], stable=True)]
    idx = idx[order]
    g, c = group[idx], ctx[idx]
    first = torch.ones_like(idx, dtype=torch.bool)
    first[1:] = (g[1:] != g[:-1]) | (c[1:] != c[:-1])
    return idx[first]


class RowSample:
    """A uniform sample of at most `n` tokens (those of smallest priority), each with up to
    `width` active features (the largest; -1 pads): `prio` (n,) float64, `feats` (n, width)."""

    def __init__(self, n: int, width: int) -> None:
        self.prio = torch.full((n,), math.inf, dtype=torch.float64)
        self.feats = torch.full((n, width), -1, dtype=torch.int32)

    def offer(self, prio: Tensor, f: Tensor) -> None:
        """prio (m,) the tokens' priorities, f (m, d_sae) their activations."""
        cand = (prio < self.prio.max()).nonzero().flatten()
        if cand.numel() == 0:
            return
        width = self.feats.shape[1]
        top = torch.topk(f[cand], min(width, f.shape[1]), dim=1)
        feats = torch.where(top.values > 0, top.indices, -1).int()
        if feats.shape[1] < width:
            feats = torch.cat(
                [feats, feats.new_full((feats.shape[0], width - feats.shape[1]), -1)], 1
            )
        allp = torch.cat([self.prio, prio[cand].double()])
        keep = torch.topk(allp, self.prio.numel(), largest=False).indices
        self.prio = allp[keep]
        self.feats = torch.cat([self.feats, feats])[keep]

    def state(self) -> dict[str, Tensor]:
        return {"sample.prio": self.prio, "sample.feats": self.feats}

    def load(self, s: dict[str, Tensor]) -> None:
        self.prio, self.feats = s["sample.prio"], s["sample.feats"]

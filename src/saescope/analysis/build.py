"""The streaming state of an index build: every accumulator over the batches seen so far, fed
one batch of encoded activations at a time, and its atomic checkpoint (safetensors + JSON),
so a killed build resumes at the last checkpointed batch and ends exactly as an uninterrupted
one (the accumulators draw no random numbers; see `accumulate.priority`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from saescope.analysis.accumulate import GroupTop, RowSample, Stats, log2_bins, priority
from saescope.analysis.config import IndexConfig
from saescope.atomic import atomic_save_tensors


@dataclass
class Batch:
    """One batch of rows to index: x (n, d_in) the activations, ctx and pos (n,) each row's
    context (numbered over the whole text) and position; the batch holds contexts
    [first, first + contexts); set_aside: its rows left out as outlier tokens."""

    x: Tensor
    ctx: Tensor
    pos: Tensor
    first: int
    contexts: int
    set_aside: int = 0


class IndexState:
    """The accumulators of one build: `stats`, `top` (per feature), `buckets` (per feature and
    activation octave: a uniform sample, for the intervals) and `sample` (co-firing), plus the
    counts of batches, tokens and outlier tokens set aside."""

    def __init__(self, d_sae: int, positions: int, cfg: IndexConfig) -> None:
        self.d_sae, self.positions, self.cfg = d_sae, positions, cfg
        self.stats = Stats(d_sae, cfg.hist_bins, cfg.hist_low)
        self.top = GroupTop(d_sae, cfg.top, cfg.width)
        self.buckets = GroupTop(d_sae * cfg.buckets, cfg.samples, cfg.width)
        self.sample = RowSample(cfg.cofire_tokens, cfg.cofire_active)
        self.batches = self.tokens = self.set_aside = 0

    def add(self, f: Tensor, b: Batch) -> None:
        """f (n, d_sae): the batch's activations."""
        rows, feats = (f > 0).nonzero(as_tuple=True)
        values = f[rows, feats]
        self.stats.add(feats, values)
        key = b.ctx * self.positions + b.pos  # (n,) each token's place in the text
        tok, ctx = key[rows], b.ctx[rows]
        windows = self._windows(f, b, rows, feats)
        self.top.offer(feats, values.double(), tok, ctx, windows)
        bucket = log2_bins(values, self.cfg.low, 1.0, self.cfg.buckets)
        prio = priority(tok * self.d_sae + feats, salt=1)
        self.buckets.offer(feats * self.cfg.buckets + bucket, prio, tok, ctx, windows)
        self.sample.offer(priority(key, salt=2), f)
        self.batches += 1
        self.tokens += f.shape[0]
        self.set_aside += b.set_aside

    def _windows(self, f: Tensor, b: Batch, rows: Tensor, feats: Tensor) -> Callable:
        """windows(idx) -> (len(idx), width): feature feats[idx]'s activations around row
        rows[idx], `before` tokens before to `after` after (0 off the context, at position 0
        and at outlier tokens)."""
        cfg, t = self.cfg, self.positions
        grid = torch.full((b.contexts, t), -1, dtype=torch.int64)
        grid[b.ctx - b.first, b.pos] = torch.arange(b.ctx.numel())
        offs = torch.arange(-cfg.before, cfg.after + 1)

        def windows(idx: Tensor) -> Tensor:
            r = rows[idx]
            p = b.pos[r][:, None] + offs
            c = (b.ctx[r] - b.first)[:, None].expand_as(p)
            g = torch.where((p >= 0) & (p < t), grid[c, p.clamp(0, t - 1)], -1)
            a = f[g.clamp_min(0), feats[idx][:, None].expand_as(g)]
            return torch.where(g >= 0, a, 0.0).float()

        return windows

    # ----- checkpoint ------------------------------------------------------------------------

    def tensors(self) -> dict[str, Tensor]:
        return {**self.stats.state(), **self.top.state("top"), **self.buckets.state("buckets")}

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        """Write the state atomically (the previous checkpoint survives a kill mid-write)."""
        counts = {"batches": self.batches, "tokens": self.tokens, "set_aside": self.set_aside}
        body = {**meta, "counts": counts}
        tensors = {**self.tensors(), **self.sample.state()}
        atomic_save_tensors(path, tensors, {"index": json.dumps(body)})

    @classmethod
    def resume(
        cls, path: Path, meta: dict[str, Any], d_sae: int, positions: int, cfg: IndexConfig
    ) -> IndexState:
        """The state in `path` when it was saved with the same `meta` (the SAE, the source and
        the stored config), else a fresh one."""
        state = cls(d_sae, positions, cfg)
        if not path.is_file():
            return state
        try:
            with safe_open(str(path), "pt") as fh:
                body = json.loads((fh.metadata() or {}).get("index", "{}"))
                if {k: body.get(k) for k in meta} != meta:
                    return state
                s = {k: fh.get_tensor(k) for k in fh.keys()}
        except (OSError, ValueError, json.JSONDecodeError):  # unreadable: start over
            return state
        state.stats.load(s)
        state.top.load(s, "top")
        state.buckets.load(s, "buckets")
        state.sample.load(s)
        counts = body["counts"]
        state.batches, state.tokens, state.set_aside = (
            int(counts[k]) for k in ("batches", "tokens", "set_aside")
        )
        return state

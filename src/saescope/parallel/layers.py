"""`--parallel layers`: several SAEs (one per hook point, or a sweep's SAEs on one hook point)
spread over the ranks. Each rank runs the model on its share of every global batch, as data
parallel does; the activations are then exchanged so that each SAE's owner holds its hook
point's whole batch, the ranks' shares in rank order, and trains it exactly as one process.

The exchange is one gather per owning rank per step (`DDPGroup.gather_to`), in the same order
on every rank whatever it owns: a rank that owns no SAE still computes its share and sends
it, so no rank waits on a collective another never makes (sparsify's hangs). Every collective
is bounded by the group's timeout, and a lost rank is named (`DDPGroup.lost`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from saescope.parallel.ddp import DDPGroup


def owners(n: int, size: int) -> list[int]:
    """The rank that trains each of n SAEs: round robin, so counts differ by at most one."""
    return [j % size for j in range(n)]


def shares(rows: int, size: int) -> list[tuple[int, int]]:
    """Each rank's rows [lo, hi) of a batch of `rows` (as `parallel.Shard` cuts it)."""
    return [(r * rows // size, (r + 1) * rows // size) for r in range(size)]


class Exchange:
    """Which hook points each rank needs (`needs[r]`: indices into the step's per-hook
    tensors), and the step's exchange: this rank's rows of every hook point in, the whole
    batch of each hook point this rank needs out. `sent` counts the bytes this rank sent
    (its rows to other owners), `steps` the exchanges made."""

    def __init__(self, group: DDPGroup, needs: Sequence[Sequence[int]]) -> None:
        if len(needs) != group.size:
            raise ValueError("needs: one list of hook indices per rank")
        self.group, self.needs = group, [list(n) for n in needs]
        self.sent = 0
        self.steps = 0

    def __call__(self, mine: Sequence[Tensor], rows: int) -> dict[int, Tensor]:
        """mine: this rank's rows of each hook point, (n_r, d_h); rows: the global batch's.
        Returns {hook index: (rows, d_h)} for the hook points this rank needs."""
        g = self.group
        cuts = shares(rows, g.size)
        most = max(hi - lo for lo, hi in cuts)
        got: dict[int, Tensor] = {}
        for owner, hooks in enumerate(self.needs):  # the same order on every rank
            if not hooks:
                continue
            widths = [mine[h].shape[1] for h in hooks]
            flat = torch.cat([mine[h] for h in hooks], dim=1)
            padded = flat.new_zeros((most, flat.shape[1]))
            padded[: flat.shape[0]] = flat
            parts = g.gather_to(padded, owner)
            if owner != g.rank:
                self.sent += padded.numel() * padded.element_size()
                continue
            assert parts is not None
            whole = torch.cat([p[: hi - lo] for p, (lo, hi) in zip(parts, cuts, strict=True)])
            for h, piece in zip(hooks, whole.split(widths, dim=1), strict=True):
                got[h] = piece.contiguous()
        self.steps += 1
        return got

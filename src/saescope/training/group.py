"""Training on several processes at once (data parallel): what the loop asks of the group of
processes that train the same SAEs together, and the single process, which needs nothing.

Each process of a group trains on its share of every batch (rank r of W reads rows
[r N / W, (r + 1) N / W) of batch i). Every loss term is a mean over the batch's tokens (or is
made into one: `saes.Across`), so the whole batch's gradient is the rows-weighted mean of the
processes' gradients, summed once per step in one flat buffer with the loss terms, the fired
latents and the live density. Whatever the loop estimates from data (normalisation, b_dec,
the outlier rule, dead-latent counters, resampling, the final tail) it computes from the whole
batch on every process, so every process holds the same weights after every step and only
rank 0 needs to write. `saescope.parallel` gives a group on torch.distributed; `SOLO` is one
process, and the loop then asks nothing (`share` is None), exactly as before.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from saescope.saes import SAE, LossOutput


class Group(Protocol):
    """Processes training the same SAEs on shares of the same batches."""

    rank: int
    size: int

    def sum_(self, t: Tensor) -> Tensor:
        """t summed over the processes, in place (returned)."""
        ...

    def min_(self, t: Tensor) -> Tensor:
        """The smallest of the processes' t, in place (returned)."""
        ...

    def gather(self, t: Tensor) -> Tensor:
        """Every process's rows of t (its own count each), concatenated in rank order."""
        ...

    def broadcast_(self, t: Tensor) -> Tensor:
        """Rank 0's t on every process, in place (returned)."""
        ...

    def kth_largest(self, candidates: Tensor, k: int) -> Tensor:
        """The k-th largest value of every process's candidates together (0-d)."""
        ...


class Solo:
    """One process: the whole batch is here, every answer is the local one."""

    rank, size = 0, 1

    def sum_(self, t: Tensor) -> Tensor:
        return t

    def min_(self, t: Tensor) -> Tensor:
        return t

    def gather(self, t: Tensor) -> Tensor:
        return t

    def broadcast_(self, t: Tensor) -> Tensor:
        return t

    def kth_largest(self, candidates: Tensor, k: int) -> Tensor:
        return candidates.topk(min(k, candidates.numel())).values.min()


SOLO = Solo()


@dataclass(frozen=True)
class _Across:
    """A loss's view of the whole batch (`saes.Across`) through the group."""

    group: Group
    rows: int

    def sum(self, t: Tensor) -> Tensor:
        return self.group.sum_(t.detach().clone())

    def min(self, t: Tensor) -> Tensor:
        return self.group.min_(t.detach().clone())

    def kth_largest(self, candidates: Tensor, k: int) -> Tensor:
        return self.group.kth_largest(candidates.detach(), k)


@dataclass
class Share:
    """One step's batch spread over the group: this process's rows trained on (`kept`), and
    over the whole batch the rows as the stream gave them (`rows`), trained on (`kept_total`)
    and set aside as outliers; whether any process found NaN or Inf in its rows (`bad`) or was
    asked to stop (`stop`: a signal number, 0 when none was)."""

    group: Group
    kept: int
    rows: int
    kept_total: int
    set_aside: int
    bad: bool
    stop: int

    @classmethod
    def of(cls, group: Group, rows: int, kept: int, bad: bool, stop: int | None) -> Share:
        """The step's share, from one sum over the processes."""
        t = torch.tensor([rows, kept, int(bad), int(stop is not None)], dtype=torch.int64)
        total, kept_total, any_bad, any_stop = group.sum_(t).tolist()
        signum = (stop or signal.SIGTERM) if any_stop else 0
        return cls(group, kept, total, kept_total, total - kept_total, any_bad > 0, signum)

    @property
    def across(self) -> _Across:
        return _Across(self.group, self.kept_total)

    @property
    def weight(self) -> float:
        """This process's part of each whole-batch mean."""
        return self.kept / max(self.kept_total, 1)

    @torch.no_grad()
    def reduce(self, sae: SAE, out: LossOutput) -> Tensor:
        """After backward: the whole batch's gradients (in place), loss terms (into `out`)
        and live density, from one sum over the processes; returns the (d_sae,) latents that
        fired anywhere."""
        params = list(sae.parameters())
        names = list(out.terms)  # the same order on every process
        density = float(getattr(sae, "live_density", 0.0))
        like = params[0]  # grads, terms and flags in one buffer of the weights' dtype
        grads = [p.new_zeros(p.numel()) if p.grad is None else p.grad.reshape(-1) for p in params]
        terms = torch.stack([out.terms[k].detach() for k in names] + [like.new_tensor(density)])
        had = like.new_tensor([float(p.grad is not None) for p in params])
        weighted = torch.cat([*grads, terms.to(like.dtype)]) * self.weight
        flat = self.group.sum_(torch.cat([weighted, out.fired().to(like.dtype), had]))
        at = 0
        for p in params:
            n = p.numel()
            p.grad = torch.empty_like(p).copy_(flat[at : at + n].view(p.shape))
            at += n
        out.terms = {k: flat[at + i] for i, k in enumerate(names)}
        at += len(names)
        if hasattr(sae, "live_density"):
            sae.live_density = float(flat[at])
        fired = flat[at + 1 : at + 1 + sae.cfg.d_sae] > 0
        for p, anywhere in zip(params, flat[at + 1 + sae.cfg.d_sae :].tolist(), strict=True):
            if not anywhere:  # no process had a gradient for it: Adam skips it, as alone
                p.grad = None
        return fired

    @torch.no_grad()
    def batch_metrics(self, y_n: Tensor, out: LossOutput) -> tuple[float, float, float]:
        """The whole batch's l0, mse (normalised units) and explained variance, from sums
        over the processes (float64; the variance in two passes, as `metrics` has it)."""
        y, y_hat = y_n.double(), out.y_hat.detach().double()
        n = self.kept_total
        resid = (y - y_hat).pow(2).sum()
        first = torch.cat([torch.stack([resid, y.new_tensor(out.l0() * y.shape[0])]), y.sum(0)])
        first = self.group.sum_(first)
        mean = first[2:] / max(n, 1)
        total = self.group.sum_((y - mean).pow(2).sum().reshape(1))[0]
        ev = 1 - first[0] / total.clamp_min(1e-12)
        return float(first[1]) / max(n, 1), float(first[0]) / max(n, 1), float(ev)

    def gathered(self, x: Tensor, y: Tensor, out: LossOutput) -> tuple[Tensor, Tensor, LossOutput]:
        """The whole batch's x, y and reconstruction on every process (resampling)."""
        xs = self.group.gather(x)
        ys = xs if y is x else self.group.gather(y)
        return xs, ys, dataclasses.replace(out, y_hat=self.group.gather(out.y_hat.detach()))


def whole(group: Group, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Every process's rows of a batch together (y still x when it was)."""
    x = group.gather(batch[0])
    return x, (x if batch[1] is batch[0] else group.gather(batch[1]))


@torch.no_grad()
def same_weights(saes: Sequence[SAE], group: Group) -> None:
    """Rank 0's weights and buffers on every process (at the start of a run)."""
    if group.size == 1:
        return
    for sae in saes:
        for t in sae.state_dict().values():
            group.broadcast_(t)

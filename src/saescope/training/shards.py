"""What latent sharding (`--parallel latents`, `training.latents`) asks of the processes and
the pieces it is made of: which latents a rank holds (`span`), the group's collectives
(`LatentGroup`; `parallel.DDPGroup` has them, `SoloLatents` is one process holding every
latent), the sum over ranks whose backward is the identity (`summed`), each row's top k over
every rank's latents (`global_topk_mask`), and the bytes one step sends (`bytes_per_step`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from saescope.errors import ConfigError

SHARDED = ("topk", "batchtopk", "relu", "jumprelu")
"""The architectures `--parallel latents` shards."""


class LatentGroup(Protocol):
    """What the sharded SAE asks of the processes holding its shards (`parallel.DDPGroup`)."""

    rank: int
    size: int

    def sum_(self, t: Tensor) -> Tensor: ...

    def min_(self, t: Tensor) -> Tensor: ...

    def all_gather(self, t: Tensor) -> list[Tensor]: ...

    def kth_largest(self, candidates: Tensor, k: int) -> Tensor: ...

    def gather_to_0(self, t: Tensor, shapes: Sequence[tuple[int, ...]]) -> list[Tensor] | None: ...


def span(d_sae: int, rank: int, size: int) -> tuple[int, int]:
    """The latents [lo, hi) rank `rank` of `size` holds (uneven splits differ by one)."""
    return rank * d_sae // size, (rank + 1) * d_sae // size


def check_shardable(cfg: Any, size: int) -> None:
    """A one-line error for an SAE `--parallel latents` cannot shard over `size` ranks."""
    if cfg.name not in SHARDED:
        raise ConfigError(
            f"--parallel latents shards {', '.join(SHARDED)} SAEs, not {cfg.name}; "
            "train it with --parallel ddp"
        )
    if cfg.d_sae < size:
        raise ConfigError(
            f"--parallel latents needs at least one latent per rank: d_sae={cfg.d_sae} over "
            f"{size} ranks; use fewer processes or a larger --d-sae"
        )


class _Summed(torch.autograd.Function):
    """The sum over ranks of each rank's tensor; backward: the identity (every rank has the
    same loss, so the gradient at the sum is each rank's gradient at its own part)."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, group: LatentGroup) -> Tensor:
        return group.sum_(t.detach().clone())

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def summed(t: Tensor, group: LatentGroup) -> Tensor:
    return _Summed.apply(t, group) if group.size > 1 else t


def _first_largest(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Each row's k largest values and their columns (N, k), ties to the lower column."""
    kth = scores.topk(k, dim=1, sorted=False).values.min(1, keepdim=True).values
    above, equal = scores > kth, scores == kth
    need = k - above.sum(1, keepdim=True)
    chosen = above | (equal & (equal.cumsum(1) <= need))
    idx = chosen.nonzero()[:, 1].view(scores.shape[0], k)
    return scores.gather(1, idx), idx


def global_topk_mask(scores: Tensor, k: int, lo: int, group: LatentGroup) -> Tensor:
    """(N, n) bool: this rank's entries among each row's k largest over every rank's
    latents (scores: this rank's n columns, latent lo onwards); ties go to the lower latent
    index. Each rank sends its k largest per row, with their global indices (one
    all-gather of N x 2k float64: values and indices, exact)."""
    n_rows, n = scores.shape
    take = min(k, n)
    vals, idx = _first_largest(scores.detach(), take)
    cand = torch.full((n_rows, 2 * k), float("-inf"), dtype=torch.float64, device=scores.device)
    cand[:, :take] = vals.double()
    cand[:, k:] = float(2**62)  # the index of a pad: after every real latent
    cand[:, k : k + take] = (idx + lo).double()
    parts = group.all_gather(cand) if group.size > 1 else [cand]
    allv = torch.cat([p[:, :k] for p in parts], 1)
    alli = torch.cat([p[:, k:] for p in parts], 1)
    order = alli.argsort(dim=1, stable=True)  # by index, then stably by value, descending
    allv, alli = allv.gather(1, order), alli.gather(1, order)
    best = allv.argsort(dim=1, descending=True, stable=True)[:, :k]
    won = alli.gather(1, best).long() - lo  # (N, k) local indices of the winners
    mine = (won >= 0) & (won < n)
    mask = torch.zeros(n_rows, n + 1, dtype=torch.bool, device=scores.device)
    mask.scatter_(1, torch.where(mine, won, n), True)
    return mask[:, :n]


class SoloLatents:
    """One process holding every latent (rank 0 of 1): the sharded code path alone."""

    rank, size = 0, 1

    def sum_(self, t: Tensor) -> Tensor:
        return t

    def min_(self, t: Tensor) -> Tensor:
        return t

    def all_gather(self, t: Tensor) -> list[Tensor]:
        return [t]

    def kth_largest(self, candidates: Tensor, k: int) -> Tensor:
        return candidates.topk(min(k, candidates.numel())).values.min()

    def gather_to_0(self, t: Tensor, shapes: Sequence[tuple[int, ...]]) -> list[Tensor]:
        return [t]


def bytes_per_step(
    arch: str,
    rows: int,
    d_out: int,
    size: int,
    k: float = 0,
    k_aux: int = 0,
    dead: int = 0,
    itemsize: int = 4,
) -> int:
    """Bytes one rank hands to the collectives in one training step of a latent-sharded SAE
    (`training.latents`; each all-reduce's tensor once, each all-gather's own part once: a
    ring moves about twice that in and out of every rank). `rows`: the batch's N; `dead`:
    latents dead over every rank (AuxK runs when any is); `itemsize`: the weights' bytes per
    number. Log steps add 8 bytes (the dead count)."""
    f64 = 8
    total = rows * d_out * itemsize  # the reconstruction, summed
    total += (d_out + 5) * f64  # b_dec's gradient, the norm, penalty, L0, checkpoint, stop
    if arch == "topk":
        total += rows * 2 * int(k) * f64  # each row's k candidates: values and indices
    if arch == "batchtopk":
        n_keep = max(1, int(k * rows))
        total += n_keep * itemsize + 2 * size * f64 + itemsize  # the cut, ties, the kept min
    if arch in ("topk", "batchtopk"):
        total += f64  # the dead count
        if dead:
            total += rows * 2 * min(k_aux, dead) * f64 + rows * d_out * itemsize  # AuxK
    return total

"""Toy models of superposition (Elhage et al. 2022, "Toy Models of Superposition").

n sparse features are squeezed through m < n hidden dimensions and read back out:
h = x W (W: n x m), x' = ReLU(h W^T + b) (or without the ReLU for the linear baseline).
Feature i is zero with probability S (its sparsity), otherwise U[0, 1]. The loss weights
feature i's squared error by its importance I_i. Many instances (for example one per
sparsity level) train at once, each with its own W and b.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from tqdm.auto import tqdm

from saescope.errors import ConfigError


@dataclass(frozen=True)
class ToyConfig:
    """A batch of toy models that differ in feature density (and share n, m, importance)."""

    n_features: int = 5
    """Number of input features n."""
    n_hidden: int = 2
    """Hidden dimensions m."""
    density: tuple[float, ...] = (1.0,)
    """Per instance, the probability that a feature is non-zero (1 - sparsity S)."""
    importance_decay: float = 1.0
    """Importance of feature i is importance_decay ** i."""
    value_range: tuple[float, float] = (0.0, 1.0)
    """A non-zero feature is uniform on this range (the paper: U[0, 1]; the seed: U[0.5, 2])."""
    importances: tuple[tuple[float, ...], ...] | None = None
    """Per instance, explicit importances of the n features (overrides importance_decay)."""
    relu_output: bool = True
    """x' = ReLU(W^T W x + b); False gives the linear baseline x' = W^T W x + b."""

    def __post_init__(self) -> None:
        if not 1 <= self.n_hidden <= self.n_features:
            raise ConfigError(
                f"need 1 <= n_hidden <= n_features, got {self.n_hidden}, {self.n_features}"
            )
        if not self.density or not all(0 < p <= 1 for p in self.density):
            raise ConfigError(f"densities must lie in (0, 1], got {self.density}")
        lo, hi = self.value_range
        if not 0 <= lo <= hi:
            raise ConfigError(f"value_range must satisfy 0 <= low <= high, got {self.value_range}")
        if self.importances is not None and (
            len(self.importances) != len(self.density)
            or any(len(r) != self.n_features for r in self.importances)
        ):
            raise ConfigError(
                "importances needs one row of n_features values per density (instance)"
            )

    @property
    def n_instances(self) -> int:
        return len(self.density)

    def importance(self) -> Tensor:
        """(instances, n): each instance's feature importances."""
        if self.importances is not None:
            return torch.tensor(self.importances, dtype=torch.float32)
        row = self.importance_decay ** torch.arange(self.n_features, dtype=torch.float32)
        return row.expand(self.n_instances, -1)


class ToyModel(nn.Module):
    """W (instances, n, m) and b (instances, n); Xavier-normal init, zero bias."""

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        i, n, m = cfg.n_instances, cfg.n_features, cfg.n_hidden
        self.W = nn.Parameter(torch.empty(i, n, m))
        nn.init.xavier_normal_(self.W)
        self.b = nn.Parameter(torch.zeros(i, n))

    def pre_output(self, x: Tensor) -> Tensor:
        """x (instances, batch, n) -> W^T W x + b, before the output ReLU."""
        if self.cfg.n_hidden == 1:  # elementwise: far faster than many 1-wide matmuls
            w = self.W[:, None, :, 0]  # (instances, 1, n)
            return (x * w).sum(-1, keepdim=True) * w + self.b[:, None, :]
        h = torch.bmm(x, self.W)  # (instances, batch, m)
        return torch.baddbmm(self.b[:, None, :], h, self.W.transpose(1, 2))

    def forward(self, x: Tensor) -> Tensor:
        """x (instances, batch, n) -> x' (instances, batch, n)."""
        out = self.pre_output(x)
        return out.relu() if self.cfg.relu_output else out


def sample(cfg: ToyConfig, batch: int, generator: torch.Generator) -> Tensor:
    """x (instances, batch, n): each feature U[0, 1] with its instance's density, else 0."""
    shape = (cfg.n_instances, batch, cfg.n_features)
    density = torch.tensor(cfg.density)[:, None, None]
    # One uniform u per entry: given u < p, u / p is U[0, 1] (half the draws of two uniforms).
    u = torch.rand(shape, generator=generator)
    # u < p exactly when q = fl(u / p) < 1 (u and p are floats, p <= 1). Float passes, in
    # place: a bool mask and torch.where cost several times as much on the CPU, for the same
    # bits.
    q = u.div_(density)
    lo, hi = cfg.value_range
    if (lo, hi) == (0.0, 1.0):
        # threshold keeps -q where it is above -1 and writes 0 elsewhere; 0 - (-q) is q and
        # 0 - 0 is +0, as torch.where's zeros.
        return torch.rsub(nn.functional.threshold(q.neg_(), -1.0, 0.0, inplace=True), 0.0)
    keep = (1 - q.floor()).clamp_min_(0)  # 1 below 1, +0 from 1 on
    return q.mul_(hi - lo).add_(lo).mul_(keep)


class _WeightedError(torch.autograd.Function):
    """sum_i mean_(b, j) importance_ij (act(pre) - x)^2_ibj, act ReLU or identity: the toy
    loss with the backward written out. Autograd's chain (mean, importance, square, minus, ReLU)
    makes about seven passes over the (instances, batch, n) gradient; this one makes two and
    gives the same bits: 2 * fl(fl(g / N) * I) is exact, so multiplying d by it rounds exactly
    as fl(fl(g / N) * I) * (2 * d) does, and the ReLU's mask is autograd's own kernel."""

    @staticmethod
    def forward(ctx, pre: Tensor, x: Tensor, importance: Tensor, relu: bool) -> Tensor:  # type: ignore[override]
        out = pre.relu() if relu else pre
        d = out - x
        loss = (importance * d**2).mean(dim=(1, 2)).sum()
        ctx.save_for_backward(d, out, importance)
        ctx.relu = relu
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        if getattr(ctx, "spent", False):
            raise RuntimeError(
                "weighted_error's backward runs once (it reuses its saved tensor); compute "
                "the loss again for another backward"
            )
        ctx.spent = True
        d, out, importance = ctx.saved_tensors
        i, b, n = d.shape
        # What autograd computes per element, here once per (instance, feature).
        scale = 2 * ((g.expand(i, 1, 1) / (b * n)) * importance)
        grad = d.mul_(scale)  # d is not needed again: backward runs once (checked above)
        if ctx.relu:  # ReLU's own backward, as autograd calls it
            grad = torch.ops.aten.threshold_backward(grad, out, 0)
        return grad, None, None, None


def weighted_error(pre: Tensor, x: Tensor, importance: Tensor, relu: bool = True) -> Tensor:
    """The training loss: sum over instances of the mean over batch and features of
    importance * (ReLU(pre) - x)^2 (pre itself for the linear model). pre and x (instances,
    batch, n), importance (instances, 1, n). Bitwise autograd's loss and gradient, faster."""
    return _WeightedError.apply(pre, x, importance, relu)


@dataclass(frozen=True)
class ToyTrainConfig:
    """Training as in the released notebook: AdamW, constant LR, batch 1024."""

    steps: int = 10_000
    """Optimiser steps."""
    batch_size: int = 1024
    """Samples per step."""
    lr: float = 1e-3
    """AdamW learning rate."""
    lr_decay_start: float = 1.0
    """Fraction of the steps after which the LR decays linearly to 0 (1.0: constant, as in
    the paper)."""
    seed: int = 0
    """Seed of the initial weights and the data."""
    progress: bool = False
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("need steps >= 1, batch_size >= 1 and lr > 0")
        if not 0 <= self.lr_decay_start <= 1:
            raise ConfigError(f"lr_decay_start must lie in [0, 1], got {self.lr_decay_start}")


def train_toy(cfg: ToyConfig, tcfg: ToyTrainConfig | None = None) -> ToyModel:
    """Train every instance at once; the loss is importance-weighted squared error, averaged
    over batch and features and summed over instances."""
    tcfg = tcfg or ToyTrainConfig()
    torch.manual_seed(tcfg.seed)
    model = ToyModel(cfg)
    gen = torch.Generator().manual_seed(tcfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr)
    decay_from = int(tcfg.lr_decay_start * tcfg.steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (tcfg.steps - s) / max(1, tcfg.steps - decay_from))
    )
    importance = cfg.importance()[:, None, :]
    for _ in tqdm(range(tcfg.steps), disable=not tcfg.progress, desc="toy models"):
        x = sample(cfg, tcfg.batch_size, gen)
        loss = weighted_error(model.pre_output(x), x, importance, cfg.relu_output)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


# ----- geometry -------------------------------------------------------------------------------


def dimensions_per_feature(W: Tensor) -> Tensor:
    """D* = m / ||W||_F^2 per instance. W (instances, n, m) or (n, m)."""
    W = W if W.ndim == 3 else W[None]
    return W.shape[-1] / W.pow(2).sum(dim=(1, 2))


def feature_dimensionality(W: Tensor) -> Tensor:
    """D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2 for each feature's row W_i (0 for a feature
    that is not represented). W (instances, n, m) or (n, m) -> (instances, n) or (n,)."""
    squeeze = W.ndim == 2
    W = W if W.ndim == 3 else W[None]
    norms = W.norm(dim=-1, keepdim=True)  # (i, n, 1)
    unit = W / norms.clamp_min(1e-12)
    overlap = torch.einsum("inm,ijm->inj", unit, W).pow(2).sum(-1)  # (i, n)
    d = norms.squeeze(-1).pow(2) / overlap.clamp_min(1e-12)
    d = torch.where(norms.squeeze(-1) > 1e-6, d, torch.zeros_like(d))
    return d[0] if squeeze else d


def hidden_angles(W: Tensor, min_norm: float = 0.5) -> list[float]:
    """Angles in degrees between successive feature directions (sorted by angle) in a 2-D
    hidden space, for the features whose norm is at least min_norm. W (n, 2)."""
    keep = W.norm(dim=1) >= min_norm
    theta = torch.atan2(W[keep, 1], W[keep, 0]).sort().values
    if theta.numel() < 2:
        return []
    gaps = torch.diff(theta, append=theta[:1] + 2 * math.pi)
    return [math.degrees(float(g)) for g in gaps]


@torch.no_grad()
def instance_losses(model: ToyModel, n: int = 16_384, seed: int = 1) -> Tensor:
    """Each instance's importance-weighted loss on n fresh samples, (instances,)."""
    cfg = model.cfg
    x = sample(cfg, n, torch.Generator().manual_seed(seed))
    return (cfg.importance()[:, None, :] * (model(x) - x) ** 2).mean(dim=(1, 2))

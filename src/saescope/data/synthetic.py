"""Synthetic data with known ground truth: `GroundTruthTask` streams.

`ArticleTask`, the seed article's task: n_features random unit vectors in d_in dimensions; each
sample is a sparse non-negative combination of between min_active and max_active of them
(uniformly many), with coefficients drawn from U(coef_low, coef_high); the article's own
setting is 8 features in 4-D, 1-3 active, U(0.5, 2). `CorrelatedTask`, the correlated
generator of Sharkey et al. (2022); `HierarchicalTask`, parents and children (absorption).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saescope.data.stream import IndexedBatches
from saescope.errors import ConfigError


class GroundTruthTask(IndexedBatches):
    """Synthetic activations with known true features: `features` (G, d_in) unit rows, and
    `sample(n, generator)` giving x (n, d_in) and the true coefficients c (n, G), x = c @
    features. Batch i depends only on (seed, i), so a stream can restart anywhere."""

    cfg: Any

    def __init__(self, cfg: Any, batch_size: int = 1024, seed: int = 0) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.cfg, self.batch_size, self.seed = cfg, batch_size, seed
        self.features = self._make_features(torch.Generator().manual_seed(cfg.feature_seed))

    @abc.abstractmethod
    def _make_features(self, g: torch.Generator) -> Tensor:
        """The true feature directions (G, d_in), unit rows, drawn from g."""

    @abc.abstractmethod
    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """n samples: x (n, d_in) and the true coefficients c (n, G)."""

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    def batch_with_truth(self, i: int) -> tuple[Tensor, Tensor]:
        """Batch i as (x, c): the data and its true coefficients."""
        return self.sample(self.batch_size, self.generator(i))

    def batch(self, i: int) -> tuple[Tensor, Tensor]:
        x, _ = self.batch_with_truth(i)
        return x, x


def _unit_rows(n: int, d: int, g: torch.Generator, dtype: torch.dtype = torch.float32) -> Tensor:
    feats = torch.randn(n, d, generator=g, dtype=dtype)
    return feats / feats.norm(dim=1, keepdim=True)


@dataclass(frozen=True)
class ArticleTaskConfig:
    """The seed article's ground-truth task."""

    d_in: int = 4
    """Dimension of the data."""
    n_features: int = 8
    """Number of true features (unit vectors)."""
    min_active: int = 1
    """Fewest true features active in a sample."""
    max_active: int = 3
    """Most true features active in a sample."""
    coef_low: float = 0.5
    """Smallest coefficient of an active feature."""
    coef_high: float = 2.0
    """Largest coefficient of an active feature."""
    feature_seed: int = 0
    """Seed of the true feature directions."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_active <= self.max_active <= self.n_features:
            raise ConfigError(
                f"need 1 <= min_active <= max_active <= n_features, got "
                f"{self.min_active}, {self.max_active}, {self.n_features}"
            )
        if self.d_in < 1 or not 0 <= self.coef_low <= self.coef_high:
            raise ConfigError("need d_in >= 1 and 0 <= coef_low <= coef_high")

    @property
    def mean_active(self) -> float:
        return (self.min_active + self.max_active) / 2


class ArticleTask(GroundTruthTask):
    """A reproducible stream of batches from the seed article's task."""

    cfg: ArticleTaskConfig

    def _make_features(self, g: torch.Generator) -> Tensor:
        return _unit_rows(self.cfg.n_features, self.cfg.d_in, g)  # (n_features, d_in)

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """n samples: x (n, d_in) and the true coefficients c (n, n_features); x = c @ features."""
        cfg = self.cfg
        counts = torch.randint(cfg.min_active, cfg.max_active + 1, (n, 1), generator=generator)
        # A uniformly random subset of `count` features per row: the `count` smallest of n
        # uniform scores, i.e. those at or below the count-th smallest.
        scores = torch.rand(n, cfg.n_features, generator=generator)
        smallest = scores.topk(cfg.max_active, dim=1, largest=False).values
        active = scores <= smallest.gather(1, counts - 1)
        coefs = cfg.coef_low + (cfg.coef_high - cfg.coef_low) * torch.rand(
            n, cfg.n_features, generator=generator
        )
        c = coefs * active
        return c @ self.features, c


@dataclass(frozen=True)
class CorrelatedTaskConfig:
    """The correlated generator of Sharkey, Braun & Millidge (2022) as coded by Cunningham et
    al.: G unit features in d dimensions whose firing probabilities are correlated (through one
    Gaussian draw per batch) and decay with the feature index."""

    d_in: int = 256
    """Dimension of the data."""
    n_features: int = 512
    """Number of true features G."""
    mean_active: float = 5.0
    """Expected active features per sample."""
    decay: float = 0.99
    """Firing probability of feature i is scaled by decay ** i."""
    feature_seed: int = 0
    """Seed of the features and their correlation."""

    def __post_init__(self) -> None:
        if self.d_in < 1 or self.n_features < 1 or not 0 < self.mean_active <= self.n_features:
            raise ConfigError("need d_in >= 1, n_features >= 1, 0 < mean_active <= n_features")


class CorrelatedTask(GroundTruthTask):
    """Batches from the correlated generator; batch i depends only on (seed, i)."""

    cfg: CorrelatedTaskConfig

    def _make_features(self, g: torch.Generator) -> Tensor:
        """The features, then (from the same generator) the firing correlation's Cholesky
        factor and the per-feature decay."""
        G = self.cfg.n_features
        features = _unit_rows(G, self.cfg.d_in, g, torch.float64).float()  # (G, d_in)
        r = torch.rand(G, G, generator=g, dtype=torch.float64)
        cov = (r + r.T) / 2
        lam_min = float(torch.linalg.eigvalsh(cov)[0])
        if lam_min < 0:  # make it positive definite
            cov -= 1.001 * lam_min * torch.eye(G, dtype=torch.float64)
        self._chol = torch.linalg.cholesky(cov)  # (G, G)
        self._decay = self.cfg.decay ** torch.arange(G, dtype=torch.float64)
        return features

    def probabilities(self, generator: torch.Generator) -> Tensor:
        """Firing probabilities for one batch: Phi(z_i) decay^i with z ~ N(0, cov), rescaled
        to mean mean_active / G."""
        z = self._chol @ torch.randn(self.cfg.n_features, generator=generator, dtype=torch.float64)
        p = torch.special.ndtr(z) * self._decay
        p = p * (self.cfg.mean_active / self.cfg.n_features) / p.mean()
        return p.clamp(max=1.0).float()

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """x (n, d_in) and the coefficients c (n, G): x = (c * s) @ features, where s ~ U[0, 1]
        is a fresh strength per sample and feature (as in Cunningham et al.'s code)."""
        G = self.cfg.n_features
        p = self.probabilities(generator)
        fire = torch.rand(n, G, generator=generator) < p
        c = torch.rand(n, G, generator=generator) * fire
        empty = ~fire.any(dim=1)  # a sample with no feature gets one random feature at 1
        pick = torch.randint(G, (n,), generator=generator)
        c[empty, pick[empty]] = 1.0
        c = c * torch.rand(n, G, generator=generator)
        return c @ self.features, c


@dataclass(frozen=True)
class HierarchicalTaskConfig:
    """A two-level hierarchy of true features, the setting where SAEs show feature absorption
    (Chanin et al. 2024, "A is for Absorption"): n_parents parents, each with n_children
    children. When a parent fires, with probability child_prob exactly one of its children
    (uniformly chosen) fires too; a child never fires without its parent. Independent features
    fire on their own. Every active feature gets a coefficient from U(coef_low, coef_high)."""

    d_in: int = 64
    """Dimension of the data."""
    n_parents: int = 8
    """Number of parent features."""
    n_children: int = 4
    """Children per parent (mutually exclusive: at most one fires per sample)."""
    n_independent: int = 16
    """Features outside the hierarchy, each firing on its own."""
    parent_prob: float = 0.15
    """Probability that a given parent fires in a sample."""
    child_prob: float = 0.6
    """Probability that one of a firing parent's children fires too."""
    independent_prob: float = 0.05
    """Probability that a given independent feature fires in a sample."""
    coef_low: float = 0.5
    """Smallest coefficient of an active feature."""
    coef_high: float = 1.5
    """Largest coefficient of an active feature."""
    feature_seed: int = 0
    """Seed of the true feature directions."""

    def __post_init__(self) -> None:
        if self.d_in < 1 or self.n_parents < 1 or self.n_children < 1 or self.n_independent < 0:
            raise ConfigError(
                "need d_in >= 1, n_parents >= 1, n_children >= 1 and n_independent >= 0, got "
                f"{self.d_in}, {self.n_parents}, {self.n_children}, {self.n_independent}"
            )
        for key in ("parent_prob", "child_prob", "independent_prob"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(
                    f"{key} must be a probability in [0, 1], got {getattr(self, key)}"
                )
        if not 0 <= self.coef_low <= self.coef_high:
            raise ConfigError(
                f"need 0 <= coef_low <= coef_high, got {self.coef_low} and {self.coef_high}"
            )

    @property
    def n_total(self) -> int:
        """All true features: parents, then children (parent-major), then independents."""
        return self.n_parents * (1 + self.n_children) + self.n_independent

    @property
    def mean_active(self) -> float:
        """Expected number of active features per sample."""
        return (
            self.n_parents * self.parent_prob * (1 + self.child_prob)
            + self.n_independent * self.independent_prob
        )


class HierarchicalTask(GroundTruthTask):
    """Batches from the hierarchical task; batch i depends only on (seed, i).

    Feature order: parents 0 .. P-1, then the children of parent 0, of parent 1, ..., then the
    independent features. `batch(i)` gives (x, x); `batch_with_truth(i)` gives (x, c), the true
    coefficients c (n, n_total) with x = c @ features."""

    cfg: HierarchicalTaskConfig

    def _make_features(self, g: torch.Generator) -> Tensor:
        P, C = self.cfg.n_parents, self.cfg.n_children
        parent_of = torch.full((self.cfg.n_total,), -1, dtype=torch.long)
        parent_of[P : P + P * C] = torch.arange(P).repeat_interleave(C)
        self._parent_of = parent_of
        return _unit_rows(self.cfg.n_total, self.cfg.d_in, g)

    @property
    def parent_of(self) -> Tensor:
        """(n_total,) long: the parent index of each child feature, -1 for the others."""
        return self._parent_of

    @property
    def parents(self) -> Tensor:
        """Indices of the parent features."""
        return torch.arange(self.cfg.n_parents)

    def children(self, parent: int) -> Tensor:
        """Indices of one parent's children."""
        P, C = self.cfg.n_parents, self.cfg.n_children
        if not 0 <= parent < P:
            raise ConfigError(f"parent must be in [0, {P}), got {parent}")
        return torch.arange(P + parent * C, P + (parent + 1) * C)

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """n samples: x (n, d_in) and the true coefficients c (n, n_total); x = c @ features."""
        cfg = self.cfg
        P, C = cfg.n_parents, cfg.n_children
        parent_on = torch.rand(n, P, generator=generator) < cfg.parent_prob
        child_on = parent_on & (torch.rand(n, P, generator=generator) < cfg.child_prob)
        which = torch.randint(C, (n, P), generator=generator)
        children = torch.zeros(n, P, C, dtype=torch.bool)
        children.scatter_(2, which.unsqueeze(2), child_on.unsqueeze(2))
        indep = torch.rand(n, cfg.n_independent, generator=generator) < cfg.independent_prob
        active = torch.cat([parent_on, children.reshape(n, P * C), indep], dim=1)
        coefs = cfg.coef_low + (cfg.coef_high - cfg.coef_low) * torch.rand(
            n, cfg.n_total, generator=generator
        )
        c = coefs * active
        return c @ self.features, c

"""The seed's superposition experiments on toy models (Elhage et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saescope.toy import (
    ToyConfig,
    ToyTrainConfig,
    dimensions_per_feature,
    hidden_angles,
    instance_losses,
    train_toy,
)

INTRO_LEVELS = 10
INTRO_REPLICAS = 4  # extra instances at the sparsest level; the lowest-loss one is reported


@dataclass
class IntroResult:
    """n = 5 features in m = 2 dimensions, importance 0.9^i, densities 1 ... 1/20."""

    density: list[float]
    W: Tensor  # (levels, 5, 2), the sparsest level being the best of its replicas
    dims_per_feature: list[float]
    sparse_angles: list[float]  # degrees between neighbouring directions, sparsest level


def intro(seed: int = 0, steps: int = 10_000, progress: bool = False) -> IntroResult:
    """The intro experiment: dense features get the top-2 orthogonal directions; sparse ones
    share the plane as a pentagon. Training can stall in a square (a local minimum the paper
    notes too), so the sparsest level is trained INTRO_REPLICAS times and the lowest loss wins."""
    levels = [float(20**-t) for t in torch.linspace(0, 1, INTRO_LEVELS)]
    density = tuple(levels + [levels[-1]] * (INTRO_REPLICAS - 1))
    cfg = ToyConfig(n_features=5, n_hidden=2, density=density, importance_decay=0.9)
    model = train_toy(cfg, ToyTrainConfig(steps=steps, seed=seed, progress=progress))
    losses = instance_losses(model)
    sparse = INTRO_LEVELS - 1 + int(losses[INTRO_LEVELS - 1 :].argmin())
    keep = [*range(INTRO_LEVELS - 1), sparse]
    W = model.W.detach()[keep]
    return IntroResult(
        density=levels,
        W=W,
        dims_per_feature=[float(d) for d in dimensions_per_feature(W)],
        sparse_angles=hidden_angles(W[-1]),
    )


def neurons_per_feature(W: Tensor, threshold: float = 0.2) -> list[list[int]]:
    """For each hidden neuron (column of W (n, m)), the features it responds to: the seed's
    polysemanticity read-out."""
    return [
        [i for i in range(W.shape[0]) if abs(float(W[i, j])) > threshold] for j in range(W.shape[1])
    ]

"""Pure metric functions on tensors. Shapes: y, y_hat (N, d); f (N, d_sae)."""

from __future__ import annotations

import torch
from torch import Tensor


def l0(f: Tensor) -> float:
    """Mean number of active latents per token."""
    return float((f != 0).sum(-1).float().mean())


def mse(y: Tensor, y_hat: Tensor) -> float:
    """Squared error summed over the feature dimension, mean over tokens."""
    return float((y_hat - y).pow(2).sum(-1).mean())


def explained_variance(y: Tensor, y_hat: Tensor) -> float:
    """1 - sum ||y - y_hat||^2 / sum ||y - mean(y)||^2 (1 is perfect, 0 is the mean's score)."""
    resid = (y - y_hat).double().pow(2).sum()
    total = (y - y.mean(0)).double().pow(2).sum()
    return float(1 - resid / total.clamp_min(1e-12))


def cosine_similarity(y: Tensor, y_hat: Tensor) -> float:
    """Mean cosine between each token and its reconstruction."""
    return float(torch.nn.functional.cosine_similarity(y, y_hat, dim=-1).mean())


def relative_reconstruction_bias(y: Tensor, y_hat: Tensor) -> float:
    """E||y_hat||^2 / E[y . y_hat]: 1 is unbiased, < 1 means shrinkage (Wright & Sharkey 2024)."""
    return float(y_hat.double().pow(2).sum() / (y.double() * y_hat.double()).sum())


def norm_ratio(y: Tensor, y_hat: Tensor) -> float:
    """Mean ||y_hat|| / ||y||."""
    return float((y_hat.norm(dim=-1) / y.norm(dim=-1).clamp_min(1e-12)).mean())


def firing_counts(f: Tensor) -> Tensor:
    """(d_sae,) how many tokens each latent fired on."""
    return (f != 0).sum(0)


def dead_fraction(counts: Tensor) -> float:
    """Fraction of latents that never fired."""
    return float((counts == 0).float().mean())


def dense_fraction(counts: Tensor, n_tokens: int, density: float = 0.1) -> float:
    """Fraction of latents firing on more than `density` of tokens."""
    return float((counts > density * n_tokens).float().mean())


def max_cosine_per_feature(W_dec: Tensor, features: Tensor) -> Tensor:
    """For each true feature (G, d), the best cosine with any decoder row of W_dec (M, d)."""
    d = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    g = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (g @ d.T).max(dim=1).values  # (G,)

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
    """E||y_hat|| / E||y|| (a ratio of means: a mean of per-token ratios is dominated by the
    tokens of smallest norm)."""
    return float(y_hat.norm(dim=-1).mean() / y.norm(dim=-1).mean().clamp_min(1e-12))


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


def cosine_matrix(W_dec: Tensor, features: Tensor) -> Tensor:
    """Cosine of every true feature (G, d) with every decoder row (M, d): (G, M)."""
    d = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    g = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return g @ d.T


def hungarian_match(W_dec: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
    """One-to-one matching of true features to latents maximising total cosine (scipy's
    linear_sum_assignment). Returns (latent index per matched feature, its cosine); with fewer
    latents than features the unmatched features are left out."""
    from scipy.optimize import linear_sum_assignment

    cos = cosine_matrix(W_dec, features).double().cpu()
    rows, cols = linear_sum_assignment(cos.numpy(), maximize=True)
    return torch.as_tensor(cols), cos[torch.as_tensor(rows), torch.as_tensor(cols)]


def mcc(W_dec: Tensor, features: Tensor) -> float:
    """Mean cosine of the one-to-one (Hungarian) matching; unmatched features count as 0."""
    _, cos = hungarian_match(W_dec, features)
    return float(cos.sum() / features.shape[0])


def fraction_recovered(W_dec: Tensor, features: Tensor, threshold: float = 0.9) -> float:
    """Fraction of true features whose best-matching latent has cosine >= threshold."""
    return float((max_cosine_per_feature(W_dec, features) >= threshold).float().mean())


def firing_f1(f: Tensor, c: Tensor, latent_of_feature: Tensor) -> dict[str, Tensor]:
    """Per matched pair, precision / recall / F1 of the latent firing (f (N, M) != 0) against
    the true feature being active (c (N, G) != 0). latent_of_feature (G,) from hungarian_match."""
    fired = f[:, latent_of_feature] != 0  # (N, G)
    active = c != 0
    tp = (fired & active).sum(0).double()
    precision = tp / fired.sum(0).clamp_min(1)
    recall = tp / active.sum(0).clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    return {"precision": precision, "recall": recall, "f1": f1}


def ce_loss_recovered(ce_clean: float, ce_spliced: float, ce_zero: float) -> float:
    """(CE_zero - CE_spliced) / (CE_zero - CE_clean): 1 when splicing the reconstruction in
    costs nothing, 0 when it is as bad as zero-ablating the hook point. NaN when zero
    ablation costs nothing either."""
    gap = ce_zero - ce_clean
    return (ce_zero - ce_spliced) / gap if gap != 0 else float("nan")

"""Pure metric functions on tensors. Shapes: y, y_hat (N, d); f (N, d_sae)."""

from __future__ import annotations

import math

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


class MetricSums:
    """The core reconstruction metrics accumulated batch by batch, so that rows never need to
    be held all at once: `add(y, y_hat, f)` per batch of rows (or any subset of rows, e.g.
    a mask's), `result()` the numbers `l0`, `mse`, `explained_variance`, `cosine_similarity`,
    `relative_reconstruction_bias`, `norm_ratio`, `dead_fraction` and `dense_fraction` give on
    all the rows added, concatenated (within float rounding: sums in float64).

    Explained variance needs the mean of all rows: each batch's per-column mean and centred
    sum of squares are merged into the running ones (Chan, Golub & LeVeque 1979), which stays
    exact where sum ||y||^2 - N ||mean||^2 would cancel."""

    def __init__(self) -> None:
        self.n = 0
        self.active = 0  # sum over rows of the latents active
        self.sq_err = 0.0  # sum ||y - y_hat||^2
        self.cosine = 0.0  # sum of per-row cosines
        self.hat_sq = 0.0  # sum ||y_hat||^2
        self.dot = 0.0  # sum y . y_hat
        self.norm_hat = 0.0  # sum ||y_hat||
        self.norm = 0.0  # sum ||y||
        self.mean: Tensor | None = None  # (d,) float64 mean of y
        self.m2: Tensor | None = None  # (d,) float64 sum of (y - mean)^2
        self.counts: Tensor | None = None  # (d_sae,) int64 tokens each latent fired on

    def add(self, y: Tensor, y_hat: Tensor, f: Tensor) -> None:
        """Rows y, y_hat (N, d) and their codes f (N, d_sae); N may be 0."""
        fired = f != 0
        counts = fired.sum(0).long().cpu()
        self.counts = counts if self.counts is None else self.counts + counts
        n = y.shape[0]
        if n == 0:
            return
        self.active += int(fired.sum())
        self.sq_err += float((y_hat - y).pow(2).sum(-1).double().sum())
        self.cosine += float(torch.nn.functional.cosine_similarity(y, y_hat, dim=-1).double().sum())
        y64, hat64 = y.double(), y_hat.double()
        self.hat_sq += float(hat64.pow(2).sum())
        self.dot += float((y64 * hat64).sum())
        self.norm_hat += float(y_hat.norm(dim=-1).double().sum())
        self.norm += float(y.norm(dim=-1).double().sum())
        mean = y64.mean(0)
        m2 = (y64 - mean).pow(2).sum(0)
        if self.mean is None or self.m2 is None:
            self.mean, self.m2 = mean, m2
        else:
            total = self.n + n
            delta = mean - self.mean
            self.m2 = self.m2 + m2 + delta.pow(2) * (self.n * n / total)
            self.mean = self.mean + delta * (n / total)
        self.n += n

    def result(self) -> dict[str, float]:
        """n_tokens and the metrics over every row added (NaN where no row was)."""
        n = self.n
        if self.counts is None:
            raise ValueError("MetricSums.result before any add: no latents to count")
        per = (lambda s: s / n) if n else (lambda s: math.nan)
        total = float(self.m2.sum()) if self.m2 is not None else 0.0
        return {
            "n_tokens": n,
            "l0": per(self.active),
            "mse": per(self.sq_err),
            "explained_variance": 1 - self.sq_err / max(total, 1e-12) if n else math.nan,
            "cosine": per(self.cosine),
            "relative_reconstruction_bias": _divide(self.hat_sq, self.dot),
            "norm_ratio": per(self.norm_hat) / max(per(self.norm), 1e-12) if n else math.nan,
            "dead_fraction": dead_fraction(self.counts),
            "dense_fraction": dense_fraction(self.counts, n),
        }


def _divide(a: float, b: float) -> float:
    """a / b as a tensor division gives it: inf or NaN for b = 0."""
    if b:
        return a / b
    return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a)

"""Logistic-regression probes, fitted in torch (no scikit-learn): binary (one logit, sigmoid)
or multinomial (softmax over classes), an L2 penalty on the weights, L-BFGS with a strong
Wolfe line search in float64. The inputs are centred and divided by one scalar (their mean
row norm over sqrt(d)), so the weights' direction is the probe's direction in the raw space."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saescope.errors import InputError


@dataclass(frozen=True)
class Probe:
    """A fitted linear probe: scores(x) = ((x - mean) / scale) @ W + b; W (d, C), C = 1 for
    a binary probe (score > 0: the positive class), else one column per class."""

    mean: Tensor
    scale: float
    W: Tensor
    b: Tensor

    def scores(self, x: Tensor) -> Tensor:
        """(n, C) logits of the rows of x (n, d)."""
        return ((x.double() - self.mean) / self.scale) @ self.W + self.b

    def predict(self, x: Tensor) -> Tensor:
        """(n,) long: the predicted class (0/1 for a binary probe)."""
        s = self.scores(x)
        return (s[:, 0] > 0).long() if s.shape[1] == 1 else s.argmax(1)

    def accuracy(self, x: Tensor, y: Tensor) -> float:
        """Fraction of rows whose predicted class is y."""
        return float((self.predict(x) == y.long()).double().mean())

    def direction(self, cls: int = 0) -> Tensor:
        """The unit direction (d,) in the raw space along which class `cls`'s score grows
        (for a binary probe, class 1's is the weight vector and class 0's its negative)."""
        w = self.W[:, cls] if self.W.shape[1] > 1 else self.W[:, 0] * (1 if cls else -1)
        return (w / w.norm().clamp_min(1e-12)).float()


def fit_logistic(
    x: Tensor, y: Tensor, n_classes: int = 2, l2: float = 1e-3, max_iter: int = 200
) -> Probe:
    """A logistic regression of labels y (n,) in [0, n_classes) on the rows of x (n, d):
    binary for n_classes = 2, else multinomial. l2: the penalty (l2 / 2) ||W||^2 added to the
    mean cross-entropy (on the normalised inputs)."""
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise InputError(f"a probe needs rows x (n, d) and labels y (n,), got {tuple(x.shape)}")
    if n_classes < 2:
        raise InputError(f"a probe needs at least 2 classes, got {n_classes}")
    x = x.double()
    y = y.long()
    mean = x.mean(0)
    xc = x - mean
    scale = float(xc.norm(dim=1).mean()) / max(x.shape[1], 1) ** 0.5 or 1.0
    xc = xc / scale
    cols = 1 if n_classes == 2 else n_classes
    W = torch.zeros(x.shape[1], cols, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(cols, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [W, b], lr=1, max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = _cross_entropy(xc @ W + b, y) + 0.5 * l2 * (W * W).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return Probe(mean, scale, W.detach(), b.detach())


def _cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    if logits.shape[1] == 1:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y.double())
    return torch.nn.functional.cross_entropy(logits, y)


def f1(pred: Tensor, y: Tensor) -> float:
    """F1 of binary predictions against binary labels (0 when nothing is predicted or true)."""
    pred, y = pred.bool(), y.bool()
    tp = float((pred & y).sum())
    denom = float(pred.sum() + y.sum())
    return 2 * tp / denom if denom else 0.0

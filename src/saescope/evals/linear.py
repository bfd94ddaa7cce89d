"""Logistic-regression probes, fitted in torch (no scikit-learn): binary (one logit, sigmoid)
or multinomial (softmax over classes), an L2 penalty on the weights, in float64: Newton's
method for a binary probe on few columns, else scipy's L-BFGS-B on the exact gradient. The
inputs are centred and divided by one scalar (their mean row norm over sqrt(d)), so the
weights' direction is the probe's direction in the raw space."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from saescope.errors import InputError

NEWTON_MAX_D = 64
"""Binary probes on at most this many columns are fitted by Newton's method (fast for a few
latents), wider ones and multinomial ones by L-BFGS."""


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
    if n_classes == 2 and x.shape[1] <= NEWTON_MAX_D:
        W0, b0 = _newton(xc, y.double(), l2)
        return Probe(mean, scale, W0[:, None], b0.reshape(1))
    W, b = _lbfgs(xc, y, 1 if n_classes == 2 else n_classes, l2, max_iter)
    return Probe(mean, scale, W, b)


def _lbfgs(x: Tensor, y: Tensor, cols: int, l2: float, max_iter: int) -> tuple[Tensor, Tensor]:
    """W (d, cols), b (cols,) minimising the mean cross-entropy + (l2 / 2) ||W||^2 by scipy's
    L-BFGS-B on the exact gradient (logits z = x W + b; residual r = p - onehot(y), or
    sigmoid(z) - y for one logit: dW = x^T r / n + l2 W, db = mean of r)."""
    from scipy.optimize import minimize  # scipy only when a probe is fitted

    n, d = x.shape
    target = y.double()[:, None] if cols == 1 else torch.nn.functional.one_hot(y, cols).double()

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.from_numpy(theta).view(d + 1, cols)
        W, b = t[:d], t[d]
        z = x @ W + b
        if cols == 1:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z, target)
            r = torch.sigmoid(z) - target
        else:
            loss = torch.nn.functional.cross_entropy(z, y)
            r = torch.softmax(z, dim=1) - target
        grad = torch.cat([x.T @ r / n + l2 * W, r.mean(0, keepdim=True)])
        return float(loss + 0.5 * l2 * (W * W).sum()), grad.reshape(-1).numpy()

    opts = {"maxiter": max_iter, "gtol": 1e-9}
    got = minimize(objective, np.zeros((d + 1) * cols), jac=True, method="L-BFGS-B", options=opts)
    t = torch.from_numpy(got.x).view(d + 1, cols)
    return t[:d].clone(), t[d].clone()


def _newton(x: Tensor, y: Tensor, l2: float, steps: int = 50) -> tuple[Tensor, Tensor]:
    """A binary logistic regression by Newton's method (the same objective as the L-BFGS
    path): w (d,), b () for inputs x (n, d) and labels y (n,) in {0, 1}; the Hessian is
    (d + 1) x (d + 1), so this serves few columns (a k-sparse probe)."""
    n, d = x.shape
    xb = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], dim=1)  # (n, d + 1)
    theta = torch.zeros(d + 1, dtype=x.dtype)
    reg = torch.full((d + 1,), l2, dtype=x.dtype)
    reg[-1] = 0.0  # the bias is not penalised

    def loss(t: Tensor) -> float:
        z = xb @ t
        bce = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
        return float(bce + 0.5 * (reg * t * t).sum())

    now = loss(theta)
    for _ in range(steps):
        p = torch.sigmoid(xb @ theta)
        grad = xb.T @ (p - y) / n + reg * theta
        hess = (xb * (p * (1 - p))[:, None]).T @ xb / n + torch.diag(reg + 1e-10)
        step = torch.linalg.solve(hess, grad)
        rate = 1.0
        while (new := loss(theta - rate * step)) > now and rate > 1e-4:
            rate /= 2  # backtracking: a full Newton step can overshoot far from the optimum
        theta, done = theta - rate * step, now - new < 1e-12
        now = new
        if done:
            break
    return theta[:-1], theta[-1]


def f1(pred: Tensor, y: Tensor) -> float:
    """F1 of binary predictions against binary labels (0 when nothing is predicted or true)."""
    pred, y = pred.bool(), y.bool()
    tp = float((pred & y).sum())
    denom = float(pred.sum() + y.sum())
    return 2 * tp / denom if denom else 0.0

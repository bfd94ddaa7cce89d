"""Outlier tokens: rows whose activation norm is many times the median.

Language models put a few tokens' residual stream at norms hundreds of times the median
("massive activations", Sun et al. 2024: attention-sink positions such as the first token or
the first delimiter). SmolLM2-135M's layer 15 has about 12 in 32,512 tokens at up to 150 times
the median norm. Left in, they dominate the squared error, so an SAE spends capacity on them
and explained variance measured with them says little about the other tokens (0.957 with
them against 0.721 without, on the same SAE). The field sets them aside (SAELens excludes
special tokens); saescope sets aside every row whose norm exceeds `factor` times the median
norm of a sample, with one rule for training and evaluation: `OutlierRule.fit` on the first
batches of a run, saved with it, and `keep` on every batch after.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor

from saescope.errors import ConfigError

DEFAULT_FACTOR = 10.0
"""Ordinary tokens stay within a few times the median norm (glassllm, MiniLM and SmolLM2:
at most 2-5x); massive activations are 100x and more."""


def check_factor(factor: float | None) -> None:
    if factor is not None and not (math.isfinite(factor) and factor > 1):
        raise ConfigError(
            f"outlier_factor must be a number above 1 (a multiple of the median norm), got "
            f"{factor}; or none to keep every token"
        )


def _median_norm(t: Tensor) -> float:
    """The median norm of the rows that are not zero (rows of zeros, as some sparse data has
    in most rows, would put the median at 0 and every other row above it); inf when all are."""
    norms = t.float().norm(dim=1)
    norms = norms[norms > 0]
    return float(norms.median()) if norms.numel() else math.inf


@dataclass(frozen=True)
class OutlierRule:
    """Set aside rows with ||x|| > x_max or ||y|| > y_max (raw units): `factor` times the
    median norms (of the non-zero rows) of the sample the rule was fitted on. y_max is None
    when y is x."""

    factor: float
    x_max: float
    y_max: float | None = None

    @classmethod
    def fit(cls, x: Tensor, y: Tensor, factor: float) -> OutlierRule:
        """The rule for data whose sample is (x, y); y is x for an SAE (not a transcoder)."""
        check_factor(factor)
        if x.shape[0] == 0:
            raise ConfigError("cannot fit an outlier rule on no rows; give at least one batch")
        y_max = None if y is x else factor * _median_norm(y)
        return cls(float(factor), factor * _median_norm(x), y_max)

    def keep(self, x: Tensor, y: Tensor) -> Tensor:
        """(N,) bool: the rows within the rule."""
        ok = x.float().norm(dim=1) <= self.x_max
        if self.y_max is not None and y is not x:
            ok &= y.float().norm(dim=1) <= self.y_max
        return ok

    def split(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, int]:
        """The rows within the rule (the batch itself when all are) and how many were set
        aside."""
        ok = self.keep(x, y)
        dropped = int(ok.numel() - ok.sum())
        if dropped == 0:
            return x, y, 0
        kept = x[ok]
        return kept, (kept if y is x else y[ok]), dropped

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> OutlierRule | None:
        """A rule saved with `to_dict` (None for a run saved without one)."""
        if not d:
            return None
        try:
            return cls(float(d["factor"]), float(d["x_max"]), d.get("y_max"))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"a saved outlier rule needs factor and x_max, got {d}; re-save the run"
            ) from None

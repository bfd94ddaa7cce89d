"""What a target L0 means for an SAE's config (`SAEConfig.target_l0`): the range it must lie
in, and the k it gives the TopK family. Training towards it is `training/target.py`."""

from __future__ import annotations

import dataclasses
from typing import Any

from saescope.errors import ConfigError


def k_for_target(cls: Any, target: float) -> float | int:
    """The k a target L0 gives a config class with k: the target itself where k may be
    fractional (a batch mean: BatchTopK, Matryoshka), else the nearest whole number >= 1."""
    k_type = str(next(f.type for f in dataclasses.fields(cls) if f.name == "k"))
    return float(target) if k_type.startswith("float") else max(1, round(target))


def check_target(cfg: Any) -> None:
    """A target between 0 and d_sae (exclusive), and, for a config with k, the k it gives;
    else a one-line error naming the fix. No target: nothing to check."""
    t = cfg.target_l0
    if t is None:
        return
    if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t < cfg.d_sae:
        raise ConfigError(
            f"target_l0 must be above 0 and below d_sae={cfg.d_sae}, got {t!r}; give the "
            "mean number of latents a token should fire"
        )
    k = getattr(cfg, "k", None)
    if k is not None and k != k_for_target(type(cfg), t):
        raise ConfigError(
            f"k={k} contradicts target_l0={t} (which sets k={k_for_target(type(cfg), t)}); "
            "give one of them"
        )

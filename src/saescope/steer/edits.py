"""What to do to one feature: `Edit` (set, add, scale or zero its activation), checked on
construction and against the SAE it is applied to."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from saescope.errors import InputError

MODES = ("set", "add", "scale", "zero")
"""set: clamp the activation to `value`; add: add `value` to it; scale: multiply it by `value`;
zero: set it to 0 (ablation; `value` is ignored)."""


def check_mode(mode: str) -> str:
    """The mode, or a one-line error naming the known ones."""
    if mode not in MODES:
        close = difflib.get_close_matches(str(mode), MODES, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise InputError(f"unknown edit mode {mode!r}; {hint}use one of {', '.join(MODES)}")
    return mode


@dataclass(frozen=True)
class Edit:
    """An edit of feature `feature`'s activation. only_active: edit only the positions where
    the feature already fires (f > 0), leaving the rest as they are (for `set` and `add`: a
    clamp that does not switch the feature on where it was silent)."""

    feature: int
    value: float = 0.0
    mode: str = "set"
    only_active: bool = False

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if isinstance(self.feature, bool) or not isinstance(self.feature, int):
            raise InputError(f"feature id {self.feature!r} is not an integer")
        if self.feature < 0:
            raise InputError(f"feature id {self.feature} is negative; ids start at 0")
        if not isinstance(self.value, int | float) or not math.isfinite(self.value):
            raise InputError(f"feature {self.feature}: value {self.value!r} is not a finite number")

    def check(self, d_sae: int) -> None:
        """A one-line error when the feature is not one of the SAE's d_sae features."""
        if self.feature >= d_sae:
            raise InputError(
                f"feature id {self.feature} is out of range: the SAE has {d_sae} features "
                f"(ids 0 to {d_sae - 1})"
            )

    def apply(self, f: Tensor) -> Tensor:
        """The feature's new activations, from its current ones f (N,)."""
        if self.mode == "zero":
            new = torch.zeros_like(f)
        elif self.mode == "set":
            new = torch.full_like(f, self.value)
        elif self.mode == "add":
            new = f + self.value
        else:
            new = f * self.value
        return torch.where(f > 0, new, f) if self.only_active else new

"""Training towards a target L0 (`SAEConfig.target_l0`).

The TopK family meets a target through k, which the config sets. The architectures with a
sparsity coefficient (`SAEConfig.sparsity_coef`: ReLU's and gated's l1_coef, JumpReLU's
l0_coef) meet it through an `L0Controller`: after the sparsity warm-up it multiplies the
coefficient by exp(log_scale), which moves each step as

    log(coef / base) = integral + PROPORTIONAL * e,  integral += GAIN * lr_factor * e,
    e = clip(log(running L0 / target), -1, 1)

a controller in log space on the running L0 (relative errors count the same at L0 2 and
L0 200; the clip bounds what one bad stretch can do), integral only by default
(PROPORTIONAL = 0). The integral's step is scaled by the learning-rate schedule, so the
coefficient moves as fast as the weights can follow it and stops when they stop (no wind-up
while the learning rate decays to 0). The coefficient's path goes to metrics.jsonl
(`sparsity_coef`), its state to the checkpoint, and the saved SAE's config holds the
coefficient reached beside its target.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from saescope.saes import SAE

GAIN = 0.02
"""Integral gain: the most log(coefficient) moves per step (at full learning rate)."""
PROPORTIONAL = 0.0
"""Proportional gain on the running L0's log error (0: a pure integral controller). A
proportional term damps the overshoot the weights' lag causes, but its kick when the
controller starts (L0 is high after the warm-up) made ReLU lose features on the 48-in-32-D
task (gain 1.5: 6 of 48 lost on seed 0, against none without; docs/RESULTS.md)."""
RUNNING_RATE = 0.1
"""Rate of the running L0's exponential average (about the last 10 batches)."""


@dataclass
class L0Controller:
    """Steers one SAE's sparsity coefficient towards a target L0."""

    target: float
    base: float
    """The config's coefficient, where the controller starts (scale 1)."""
    integral: float = 0.0
    """The integral term of log(coefficient / base)."""
    running_l0: float | None = None
    """Exponential average of the batches' L0 since the controller started."""

    @property
    def log_scale(self) -> float:
        """log(coefficient / base): the integral plus the proportional term."""
        if self.running_l0 is None:
            return self.integral
        return self.integral + PROPORTIONAL * self.error()

    @property
    def coef(self) -> float:
        """The coefficient in force: the config's times the controller's scale."""
        return self.base * math.exp(self.log_scale)

    def scale(self) -> float:
        """Multiplier on the config's coefficient (`LossContext.sparsity_scale` takes it)."""
        return math.exp(self.log_scale)

    def error(self) -> float:
        """log(running L0 / target), clipped to [-1, 1]."""
        e = math.log(max(self.running_l0 or 0.0, 1e-3) / self.target)
        return max(-1.0, min(1.0, e))

    def update(self, l0: float, lr_factor: float) -> None:
        """One step: move the coefficient up if the L0 is above target, else down."""
        last = l0 if self.running_l0 is None else self.running_l0
        self.running_l0 = last + RUNNING_RATE * (l0 - last)
        self.integral += GAIN * lr_factor * self.error()

    def state(self) -> dict[str, Any]:
        """What the checkpoint keeps (JSON floats read back bit for bit)."""
        return {"integral": self.integral, "running_l0": self.running_l0}

    def load(self, state: dict[str, Any]) -> None:
        self.integral = float(state["integral"])
        rl0 = state.get("running_l0")
        self.running_l0 = None if rl0 is None else float(rl0)


def controller_for(sae: SAE) -> L0Controller | None:
    """A controller for an SAE with a target L0 and a coefficient to steer, else None."""
    cfg = sae.cfg
    name = cfg.sparsity_coef
    if cfg.target_l0 is None or name is None:
        return None
    return L0Controller(float(cfg.target_l0), float(getattr(cfg, name)))


def record(sae: SAE, controller: L0Controller | None) -> dict[str, Any] | None:
    """Put the coefficient reached into the SAE's config (in place; the saved copy's) and
    say what the target did, for cfg.json's metadata (None without a controller)."""
    if controller is None:
        return None
    name = sae.cfg.sparsity_coef
    assert name is not None
    sae.cfg = dataclasses.replace(sae.cfg, **{name: controller.coef})
    return {
        "target": controller.target,
        "coefficient": name,
        "start": controller.base,
        "reached": controller.coef,
        "running_l0": controller.running_l0,
    }

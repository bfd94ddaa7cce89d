"""Training towards a target L0 (`SAEConfig.target_l0`).

The TopK family meets a target through k, which the config sets. The architectures with a
sparsity coefficient (`SAEConfig.sparsity_coef`: ReLU's and gated's l1_coef, JumpReLU's
l0_coef) meet it through an `L0Controller`: after the sparsity warm-up it multiplies the
coefficient by exp(log_scale) and moves log_scale each step by

    gain * lr_factor * clip(log(l0 / target), -1, 1)

an integral controller in log space on the batch's L0 (relative errors count the same at
L0 2 and L0 200; one bad batch moves the coefficient by at most a factor e^gain). The step
is scaled by the learning-rate schedule, so the coefficient moves as fast as the weights can
follow it and stops when they stop (no wind-up while the learning rate decays to 0). The
coefficient's path goes to metrics.jsonl (`sparsity_coef`), its state to the checkpoint,
and the saved SAE's config holds the coefficient reached beside its target.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from saescope.saes import SAE

GAIN = 0.02
"""Largest change of log(coefficient) per step (at full learning rate)."""
RUNNING_RATE = 0.02
"""Rate of the running L0's exponential average (about the last 50 batches)."""


@dataclass
class L0Controller:
    """Steers one SAE's sparsity coefficient towards a target L0."""

    target: float
    base: float
    """The config's coefficient, where the controller starts (scale 1)."""
    log_scale: float = 0.0
    running_l0: float | None = None
    """Exponential average of the batches' L0 since the controller started."""

    @property
    def coef(self) -> float:
        """The coefficient in force: the config's times the controller's scale."""
        return self.base * math.exp(self.log_scale)

    def scale(self) -> float:
        """Multiplier on the config's coefficient (`LossContext.sparsity_scale` takes it)."""
        return math.exp(self.log_scale)

    def update(self, l0: float, lr_factor: float) -> None:
        """One step: move the coefficient up if the batch's L0 is above target, else down."""
        self.running_l0 = (
            l0 if self.running_l0 is None else self.running_l0 + RUNNING_RATE * (l0 - self.running_l0)
        )
        error = math.log(max(l0, 1e-3) / self.target)
        self.log_scale += GAIN * lr_factor * max(-1.0, min(1.0, error))

    def state(self) -> dict[str, Any]:
        """What the checkpoint keeps (JSON floats read back bit for bit)."""
        return {"log_scale": self.log_scale, "running_l0": self.running_l0}

    def load(self, state: dict[str, Any]) -> None:
        self.log_scale = float(state["log_scale"])
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

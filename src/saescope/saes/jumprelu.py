"""JumpReLU SAE (Rajamanoharan et al. 2024, arXiv 2407.14435).

f = z * H(z - theta) with a learned threshold theta_i per latent, z = (x - b_dec) W_enc + b_enc.
L = ||x - x_hat||^2 + l0_coef * sum_i H(z_i - theta_i). H has no gradient, so the threshold
learns from straight-through pseudo-derivatives with a rectangle kernel of bandwidth eps
(sec. 4, eqs. 11-12). theta is stored as log(theta) to stay positive; files hold `threshold`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, final

import torch
from torch import Tensor, nn

from saescope import ops
from saescope.errors import ConfigError
from saescope.saes.base import SAE, LossContext, LossOutput, SAEConfig


@dataclass(frozen=True)
class JumpReLUConfig(SAEConfig):
    name: ClassVar[str] = "jumprelu"

    l0_coef: float = 0.3
    """L0 sparsity coefficient (on inputs normalised to E||x|| = sqrt(d_in))."""
    bandwidth: float | None = None
    """Width eps of the rectangle kernel in the threshold's pseudo-derivative; default
    0.125 sqrt(d_in), on the scale of normalised activations."""
    threshold_init: float | None = None
    """Initial threshold of every latent; default 0.125 sqrt(d_in)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        # Thresholds live on the scale of a feature's activation, which grows as sqrt(d_in) on
        # normalised inputs. Starting near it with a wide kernel keeps latents from dying
        # while the thresholds climb (measured on the seed-like tasks: docs/RESULTS.md).
        for key in ("bandwidth", "threshold_init"):
            if getattr(self, key) is None:
                object.__setattr__(self, key, 0.125 * math.sqrt(self.d_in))
        if self.l0_coef < 0:
            raise ConfigError(f"l0_coef must be >= 0, got {self.l0_coef}")
        if self.bandwidth <= 0 or self.threshold_init <= 0:  # type: ignore[operator]
            raise ConfigError("bandwidth and threshold_init must be > 0")


@final
class JumpReLUSAE(SAE):
    config_cls = JumpReLUConfig
    cfg: JumpReLUConfig
    latent_axes: ClassVar[dict[str, int]] = {"W_enc": 1, "W_dec": 0, "b_enc": 0, "log_threshold": 0}

    def _extra_params(self) -> None:
        m = self.cfg.d_sae
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.log_threshold = nn.Parameter(torch.full((m,), math.log(self.cfg.threshold_init)))

    def _reset_extra(self) -> None:
        self.b_enc.data.zero_()
        self.log_threshold.data.fill_(math.log(self.cfg.threshold_init))

    def _reset_latents(self, idx: Tensor) -> None:
        self.b_enc.data[idx] = 0.0
        self.log_threshold.data[idx] = math.log(self.cfg.threshold_init)

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def pre_acts(self, x: Tensor) -> Tensor:
        return self._centre(x) @ self.W_enc + self.b_enc  # (N, d_sae)

    def _encode(self, x: Tensor) -> Tensor:
        return ops.jumprelu(self.pre_acts(x), self.threshold, self.cfg.bandwidth)

    def loss(self, x: Tensor, y: Tensor, ctx: LossContext | None = None) -> LossOutput:
        ctx = ctx or LossContext()
        pre = self.pre_acts(self._flat(x))
        theta = self.threshold
        f = ops.jumprelu(pre, theta, self.cfg.bandwidth)
        y_hat = self.decode(f)
        l0 = ops.step(pre, theta, self.cfg.bandwidth).sum(-1).mean()
        coef = self.cfg.l0_coef * ctx.sparsity_scale
        return LossOutput(y_hat, f, {"mse": self.mse(y, y_hat), "l0": coef * l0})

    def to_file_tensors(self) -> dict[str, Tensor]:
        t = {k: v for k, v in self.state_dict().items() if k != "log_threshold"}
        return {**t, "threshold": self.threshold.detach()}

    def from_file_tensors(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        t = dict(tensors)
        t["log_threshold"] = t.pop("threshold").log()
        return t

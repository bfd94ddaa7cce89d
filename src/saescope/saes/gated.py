"""Gated SAE (Rajamanoharan et al. 2024, arXiv 2404.16014).

Separates whether a latent fires (the gate) from how strongly (the magnitude), with weights
shared through a per-latent rescaling: W_mag[:, i] = exp(r_mag[i]) W_gate[:, i] (sec. 3.2).
pi_gate = (x - b_dec) W_enc + b_gate;  pi_mag = (x - b_dec) W_mag + b_mag;
f = 1[pi_gate > 0] * ReLU(pi_mag).  L = ||x - x_hat||^2 + l1 * sum_i ReLU(pi_gate)_i ||d_i||
+ ||x - (ReLU(pi_gate) sg(W_dec) + sg(b_dec))||^2, the last term through a frozen decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, final

import torch
from torch import Tensor, nn

from saescope.errors import ConfigError
from saescope.saes.base import SAE, LossContext, LossOutput, SAEConfig


@dataclass(frozen=True)
class GatedConfig(SAEConfig):
    name: ClassVar[str] = "gated"
    sparsity_coef: ClassVar[str | None] = "l1_coef"

    l1_coef: float = 1.0
    """L1 coefficient on the gate's ReLU (on inputs normalised to E||x|| = sqrt(d_in))."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l1_coef < 0:
            raise ConfigError(f"l1_coef must be >= 0, got {self.l1_coef}")

    @property
    def dead_latent_strategy(self) -> str:
        return "resample"


@final
class GatedSAE(SAE):
    config_cls = GatedConfig
    cfg: GatedConfig
    latent_axes: ClassVar[dict[str, int]] = {
        "W_enc": 1,
        "W_dec": 0,
        "b_gate": 0,
        "b_mag": 0,
        "r_mag": 0,
    }
    has_b_enc: ClassVar[bool] = False  # b_gate and b_mag instead

    def _extra_params(self) -> None:
        m = self.cfg.d_sae
        self.b_gate = nn.Parameter(torch.zeros(m))
        self.b_mag = nn.Parameter(torch.zeros(m))
        self.r_mag = nn.Parameter(torch.zeros(m))

    def pre_acts(self, x: Tensor) -> Tensor:
        """The gate's pre-activations pi_gate (N, d_sae)."""
        return self._enc_product(self._centre(x), self.W_enc) + self.b_gate

    def _gate_mag(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pi_gate = self.pre_acts(x)  # (N, d_sae)
        pi_mag = self._centre(x) @ (self.W_enc * self.r_mag.exp()) + self.b_mag  # (N, d_sae)
        return pi_gate, pi_mag

    def _encode(self, x: Tensor) -> Tensor:
        pi_gate, pi_mag = self._gate_mag(x)
        return (pi_gate > 0).to(pi_mag.dtype) * pi_mag.relu()

    def _loss(self, x: Tensor, y: Tensor, ctx: LossContext | None = None) -> LossOutput:
        ctx = ctx or LossContext()
        pi_gate, pi_mag = self._gate_mag(self._flat(x))
        f = (pi_gate > 0).to(pi_mag.dtype) * pi_mag.relu()
        y_hat = self.decode(f)
        gate = pi_gate.relu()
        l1 = (gate * self.W_dec.norm(dim=1)).sum(-1).mean()
        y_gate = gate @ self.W_dec.detach() + self.b_dec.detach()
        return LossOutput(
            y_hat,
            f,
            {
                "mse": self.mse(y, y_hat),
                "l1": self.cfg.l1_coef * ctx.sparsity_scale * l1,
                "gate_aux": self.mse(y.detach(), y_gate),  # a skip part stays frozen
            },
        )

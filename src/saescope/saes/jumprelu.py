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

from saescope import ops, sparse
from saescope.errors import ConfigError
from saescope.saes.base import SAE, LossContext, LossOutput, SAEConfig
from saescope.sparse import SparseCodes


@dataclass(frozen=True)
class JumpReLUConfig(SAEConfig):
    name: ClassVar[str] = "jumprelu"
    sparsity_coef: ClassVar[str | None] = "l0_coef"

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
        self.log_threshold = nn.Parameter(torch.empty(self.cfg.d_sae))

    def _initial(self, name: str) -> float:
        return math.log(self.cfg.threshold_init) if name == "log_threshold" else 0.0  # type: ignore[arg-type]

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def _encode(self, x: Tensor) -> Tensor:
        return ops.jumprelu(self.pre_acts(x), self.threshold, self.cfg.bandwidth)

    def _loss(self, x: Tensor, y: Tensor, ctx: LossContext | None = None) -> LossOutput:
        ctx = ctx or LossContext()
        x = self._flat(x)
        coef = self.cfg.l0_coef * ctx.sparsity_scale
        if self.use_sparse(self.live_density):
            return self._sparse_loss(x, y, coef)
        pre = self.pre_acts(x)
        theta = self.threshold
        eps = self.cfg.bandwidth
        f = ops.jumprelu(pre, theta, eps)
        y_hat = self.decode(f)
        l0 = ops.step(pre, theta, eps).sum(-1).mean()
        self.live_density = float((pre.detach() > theta.detach() - eps).float().mean())  # type: ignore[operator]
        return LossOutput(y_hat, f, {"mse": self.mse(y, y_hat), "l0": coef * l0})

    def _sparse_loss(self, x: Tensor, y: Tensor, coef: float) -> LossOutput:
        """The same loss on the positions with z > theta - eps only: below the threshold's
        band (half-width eps/2) f is 0 and neither z nor theta gets a gradient."""
        theta, eps = self.threshold, self.cfg.bandwidth
        band = sparse.above(theta.detach() - eps)  # type: ignore[operator]
        ((p, z),) = self.sparse_encode(x, [band])
        theta_at = theta[p.col]
        f = ops.jumprelu(z, theta_at, eps)  # type: ignore[arg-type]
        y_hat, mse = sparse.decode_error(p, f, self.W_dec, self.b_dec, y)
        l0 = ops.step(z, theta_at, eps).sum() / x.shape[0]  # type: ignore[arg-type]
        self.live_density = p.density
        terms = {"mse": mse, "l0": coef * l0}
        return LossOutput(y_hat, None, terms, codes=SparseCodes(p, f.detach()))

    def to_file_tensors(self) -> dict[str, Tensor]:
        """SAELens's `threshold`, and the exact `log_threshold` beside it: exp does not invert
        bit for bit, so a load from `threshold` alone would move some entries by an ulp."""
        return {**self.state_dict(), "threshold": self.threshold.detach()}

    def from_file_tensors(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        t = dict(tensors)
        threshold = t.pop("threshold", None)  # missing: the load's shape check names it
        exact = t.get("log_threshold")
        if threshold is not None and (exact is None or not torch.equal(exact.exp(), threshold)):
            t["log_threshold"] = threshold.log()  # older files, or a threshold edited since
        return t

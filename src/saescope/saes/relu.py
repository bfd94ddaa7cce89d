"""ReLU SAE with an L1 penalty: the seed's model (Bricken et al. 2023, Towards Monosemanticity).

f = ReLU((x - b_dec) W_enc + b_enc); x_hat = f W_dec + b_dec; L = ||x - x_hat||^2 + l1 * ||f||_1,
with unit-norm decoder rows. `l1_mode="weighted"` is Anthropic's April 2024 update instead:
the penalty is sum_i f_i ||W_dec[i]||, decoder norms are free, decoder rows start at norm 0.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, final

from torch import Tensor

from saescope import sparse
from saescope.errors import ConfigError
from saescope.saes.base import SAE, LossContext, LossOutput, SAEConfig
from saescope.sparse import SparseCodes


@dataclass(frozen=True)
class ReLUConfig(SAEConfig):
    name: ClassVar[str] = "relu"
    sparsity_coef: ClassVar[str | None] = "l1_coef"

    l1_coef: float = 1.0
    """L1 sparsity coefficient (on inputs normalised to E||x|| = sqrt(d_in))."""
    l1_mode: str = "unit"
    """"unit": L1 on f with unit-norm decoder rows (the seed); "weighted": L1 on f_i ||d_i||,
    free decoder norms (Anthropic April 2024 update)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l1_mode not in ("unit", "weighted"):
            raise ConfigError(f"l1_mode must be 'unit' or 'weighted', got {self.l1_mode!r}")
        if self.l1_coef < 0:
            raise ConfigError(f"l1_coef must be >= 0, got {self.l1_coef}")

    @property
    def unit_norm_decoder(self) -> bool:
        return self.l1_mode == "unit"

    @property
    def dead_latent_strategy(self) -> str:
        return "resample"


@final
class ReLUSAE(SAE):
    config_cls = ReLUConfig
    cfg: ReLUConfig

    @property
    def decoder_init_norm(self) -> float:  # type: ignore[override]
        return 1.0 if self.cfg.unit_norm_decoder else 0.1

    def _encode(self, x: Tensor) -> Tensor:
        return self.pre_acts(x).relu()

    def _loss(self, x: Tensor, y: Tensor, ctx: LossContext | None = None) -> LossOutput:
        ctx = ctx or LossContext()
        x = self._flat(x)
        coef = self.cfg.l1_coef * ctx.sparsity_scale
        if self.use_sparse(self.live_density):
            return self._sparse_loss(x, y, coef)
        f = self._encode(x)
        y_hat = self.decode(f)
        if self.cfg.l1_mode == "unit":
            l1 = f.sum(-1).mean()  # f >= 0, so |f| = f
        else:
            l1 = (f * self.W_dec.norm(dim=1)).sum(-1).mean()
        self.live_density = float((f != 0).float().mean())
        return LossOutput(y_hat, f, {"mse": self.mse(y, y_hat), "l1": coef * l1})

    def _sparse_loss(self, x: Tensor, y: Tensor, coef: float) -> LossOutput:
        """The same loss on the live codes only: ReLU's zeros pass no gradient."""
        ((p, z),) = self.sparse_encode(x, [sparse.above(0.0)])
        if self.precision != "fp32":  # chosen on the bf16 product: z may be just below 0
            z = z.relu()
        y_hat, mse = sparse.decode_error(p, z, self.W_dec, self.b_dec, y)  # ReLU(z) = z there
        if self.cfg.l1_mode == "unit":
            l1 = z.sum() / x.shape[0]
        else:
            l1 = (z * self.W_dec.norm(dim=1)[p.col]).sum() / x.shape[0]
        self.live_density = p.density
        terms = {"mse": mse, "l1": coef * l1}
        return LossOutput(y_hat, None, terms, codes=SparseCodes(p, z.detach()))

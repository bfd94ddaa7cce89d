"""TopK SAE with the AuxK dead-latent loss (Gao et al. 2024, arXiv 2406.04093).

pre = (x - b_dec) W_enc + b_enc; f keeps each token's k largest pre-activations (ReLU'd);
x_hat = f W_dec + b_dec. L = ||x - x_hat||^2 + aux_coef * AuxK (`auxk.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, final

from torch import Tensor

from saescope import ops, sparse
from saescope.errors import ConfigError
from saescope.saes.auxk import AuxKConfig, auxk_loss, sparse_topk_loss
from saescope.saes.base import SAE, LossContext, LossOutput


@dataclass(frozen=True)
class TopKConfig(AuxKConfig):
    name: ClassVar[str] = "topk"

    k: int = 32
    """Active latents per token."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.k, bool) or not 1 <= self.k <= self.d_sae:
            raise ConfigError(f"k must be between 1 and d_sae={self.d_sae}, got {self.k}")


@final
class TopKSAE(SAE):
    config_cls = TopKConfig
    cfg: TopKConfig

    def _encode(self, x: Tensor) -> Tensor:
        return ops.topk_activation(self.pre_acts(x), self.cfg.k)

    def _loss(self, x: Tensor, y: Tensor, ctx: LossContext | None = None) -> LossOutput:
        ctx = ctx or LossContext()
        x = self._flat(x)
        if self.use_sparse(self.cfg.k / self.cfg.d_sae):
            y_hat, mse, codes, aux = sparse_topk_loss(self, x, y, ctx, sparse.topk(self.cfg.k))
            terms = {"mse": mse, "auxk": self.cfg.aux_coef * aux}
            return LossOutput(y_hat, None, terms, codes=codes)
        pre = self.pre_acts(x)
        f = ops.topk_activation(pre, self.cfg.k)
        y_hat = self.decode(f)
        aux = self.cfg.aux_coef * auxk_loss(self, pre, y, y_hat, ctx)
        return LossOutput(y_hat, f, {"mse": self.mse(y, y_hat), "auxk": aux})

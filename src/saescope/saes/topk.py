"""TopK SAE with the AuxK dead-latent loss (Gao et al. 2024, arXiv 2406.04093).

pre = (x - b_dec) W_enc + b_enc; f keeps each token's k largest pre-activations (ReLU'd);
x_hat = f W_dec + b_dec. L = ||x - x_hat||^2 + aux_coef * AuxK, where AuxK reconstructs the
residual from the top-k_aux dead latents, decoded without bias (sec. 2.4, App. A.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, final

import torch
from torch import Tensor, nn

from saescope import ops, sparse
from saescope.errors import ConfigError
from saescope.saes.base import SAE, LossContext, LossOutput, SAEConfig
from saescope.sparse import SparseCodes


@dataclass(frozen=True)
class TopKConfig(SAEConfig):
    name: ClassVar[str] = "topk"

    k: int = 32
    """Active latents per token."""
    k_aux: int | None = None
    """Dead latents used by the AuxK loss; default d_in // 2 (Gao et al. App. B.1)."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.k, bool) or not 1 <= self.k <= self.d_sae:
            raise ConfigError(f"k must be between 1 and d_sae={self.d_sae}, got {self.k}")
        if self.k_aux is None:
            object.__setattr__(self, "k_aux", max(1, self.d_in // 2))
        if self.k_aux < 1:  # type: ignore[operator]
            raise ConfigError(f"k_aux must be >= 1, got {self.k_aux}")

    @property
    def dead_latent_strategy(self) -> str:
        return "auxk"


def auxk_loss(sae: SAE, pre: Tensor, y: Tensor, y_hat: Tensor, ctx: LossContext) -> Tensor:
    """AuxK: reconstruct the (detached) residual y - y_hat from the top-k_aux dead latents,
    decoded without any bias, as a fraction of the residual's variance."""
    dead = ctx.dead
    if dead is None or not bool(dead.any()):
        return pre.new_zeros(())
    z_aux = ops.auxk_topk(pre, dead, sae.cfg.k_aux)  # type: ignore[attr-defined]
    e = (y - y_hat).detach()
    return ops.normalised_mse(e - z_aux @ sae.W_dec, e)


def sparse_topk_loss(
    sae: SAE, x: Tensor, y: Tensor, ctx: LossContext, chooser: sparse.Chooser
) -> tuple[Tensor, Tensor, SparseCodes, Tensor]:
    """The TopK family's forward on the sparse path: (y_hat without a gradient, MSE term,
    codes, unweighted AuxK loss). Same values and gradients as the dense path, AuxK's
    gradient to the encoder included."""
    dead = ctx.dead
    use_aux = dead is not None and bool(dead.any())
    choosers = [chooser, sparse.aux_topk(dead, sae.cfg.k_aux)] if use_aux else [chooser]  # type: ignore[arg-type,attr-defined]
    coded = sparse.encode(x, sae.W_enc, sae.b_enc, sae.centring_bias(), choosers)
    p, z = coded[0]
    vals = z.relu()
    y_hat, mse = sparse.decode_error(p, vals, sae.W_dec, sae.b_dec, y)
    aux = y_hat.new_zeros(())
    if use_aux:
        aux_p, aux_z = coded[1]
        e = (y - y_hat).detach()
        aux = ops.normalised_mse(e - sparse.decode(aux_p, aux_z.relu(), sae.W_dec, None), e)
    return y_hat, mse, SparseCodes(p, vals.detach()), aux


@final
class TopKSAE(SAE):
    config_cls = TopKConfig
    cfg: TopKConfig
    latent_axes: ClassVar[dict[str, int]] = {"W_enc": 1, "W_dec": 0, "b_enc": 0}

    def _extra_params(self) -> None:
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae))

    def pre_acts(self, x: Tensor) -> Tensor:
        return self._centre(x) @ self.W_enc + self.b_enc  # (N, d_sae)

    def _encode(self, x: Tensor) -> Tensor:
        return ops.topk_activation(self.pre_acts(x), self.cfg.k)

    def _reset_latents(self, idx: Tensor) -> None:
        self.b_enc.data[idx] = 0.0

    def loss(self, x: Tensor, y: Tensor, ctx: LossContext | None = None) -> LossOutput:
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

"""AuxK, the dead-latent loss of the TopK family (Gao et al. 2024, arXiv 2406.04093, sec. 2.4
and App. A.2), and the family's shared forward on the sparse path.

AuxK reconstructs the (detached) residual e = y - y_hat from the k_aux largest pre-activations
among dead latents, decoded without any bias, and scores it as a fraction of e's variance.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from saescope import ops, sparse
from saescope.errors import ConfigError
from saescope.saes.base import SAE, LossContext, SAEConfig
from saescope.saes.loss import Across
from saescope.sparse import SparseCodes


@dataclass(frozen=True)
class AuxKConfig(SAEConfig):
    """Fields of every architecture trained with AuxK (abstract: no `name`)."""

    k_aux: int | None = None
    """Dead latents used by the AuxK loss; default d_in // 2 (Gao et al. App. B.1)."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k_aux is None:
            object.__setattr__(self, "k_aux", max(1, self.d_in // 2))
        if isinstance(self.k_aux, bool) or self.k_aux < 1:  # type: ignore[operator]
            raise ConfigError(f"k_aux must be >= 1, got {self.k_aux}")
        if self.aux_coef < 0:
            raise ConfigError(f"aux_coef must be >= 0, got {self.aux_coef}")

    @property
    def dead_latent_strategy(self) -> str:
        return "auxk"


def fvu(residual: Tensor, target: Tensor, across: Across | None = None) -> Tensor:
    """`ops.fvu`; with `across` (rows spread over processes), this process's part of the
    whole batch's FVU: its rows' mean squared residual over the whole batch's variance per
    token (target's mean and variance summed over the processes, two passes), so that the
    rows-weighted mean over the processes is the whole batch's FVU."""
    if across is None:
        return ops.fvu(residual, target)
    target = target.detach()
    mean = across.sum(target.sum(0)) / across.rows
    var = across.sum((target - mean).pow(2).sum())
    per_token = residual.pow(2).sum() / max(target.shape[0], 1)
    return per_token / (var / across.rows).clamp_min(1e-12)


def auxk_loss(sae: SAE, pre: Tensor, y: Tensor, y_hat: Tensor, ctx: LossContext) -> Tensor:
    """AuxK on the dense path: the fraction of the residual's variance left unexplained by
    the top-k_aux dead latents (0 when no latent is dead)."""
    dead = ctx.dead
    if dead is None or not bool(dead.any()):
        return pre.new_zeros(())
    z_aux = ops.auxk_topk(pre, dead, sae.cfg.k_aux)  # type: ignore[attr-defined]
    e = (y - y_hat).detach()
    return fvu(e - z_aux @ sae.W_dec, e, ctx.across)


def sparse_topk_loss(
    sae: SAE, x: Tensor, y: Tensor, ctx: LossContext, chooser: sparse.Chooser
) -> tuple[Tensor, Tensor, SparseCodes, Tensor]:
    """The TopK family's forward on the sparse path: (y_hat without a gradient, MSE term,
    codes, unweighted AuxK loss). Same values and gradients as the dense path, AuxK's
    gradient to the encoder included."""
    dead = ctx.dead
    use_aux = dead is not None and bool(dead.any())
    choosers = [chooser, sparse.aux_topk(dead, sae.cfg.k_aux)] if use_aux else [chooser]  # type: ignore[arg-type,attr-defined]
    coded = sae.sparse_encode(x, choosers)
    p, z = coded[0]
    vals = z.relu()
    y_hat, mse = sparse.decode_error(p, vals, sae.W_dec, sae.b_dec, y)
    aux = y_hat.new_zeros(())
    if use_aux:
        aux_p, aux_z = coded[1]
        e = (y - y_hat).detach()
        aux = fvu(e - sparse.decode(aux_p, aux_z.relu(), sae.W_dec, None), e, ctx.across)
    return y_hat, mse, SparseCodes(p, vals.detach()), aux

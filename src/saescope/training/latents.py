"""One SAE's latents sharded over the processes of a group (`--parallel latents`): rank r of
W holds latents [r d_sae / W, (r + 1) d_sae / W) (`span`): their W_enc columns, b_enc
entries, W_dec rows and every other per-latent tensor (JumpReLU's thresholds, BatchTopK's
threshold buffer, the dead-latent counters, the Adam moments), so d_sae can exceed one
device's memory. b_dec (and a skip connection) are replicated and stay identical.

Every rank sees the whole batch. Its latents' pre-activations are its own; the reconstruction
is the sum over ranks of each rank's partial decode (one all-reduce of an N x d_out tensor),
plus b_dec, so the loss is computed identically on every rank. The sum's backward is the
identity: every rank has the same loss and the same gradient at the reconstruction, so each
gets the gradient of its own shard. b_dec's gradient through the encoder (x - b_dec) is a sum
over the shards (one all-reduce of d_in numbers, with the squared gradient norm). TopK keeps
each row's k largest over all ranks from each rank's k candidates (values and global indices
all-gathered, ties to the lower index); BatchTopK the batch's N*k largest from each rank's
N*k; AuxK the k_aux largest among the dead latents of all ranks, per row. docs/DISTRIBUTED.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from saescope import ops
from saescope.saes import SAE, LossContext, LossOutput, make_sae
from saescope.saes.batchtopk import threshold_from_kept
from saescope.training.shards import LatentGroup, check_shardable, global_topk_mask, span, summed

BUFFER_AXES = {"threshold": 0}
"""Per-latent buffers (beside each architecture's `latent_axes`): BatchTopK's threshold."""


@dataclass
class ShardOutput(LossOutput):
    """A sharded loss: `terms` are the whole SAE's (the same on every rank), `objective` is
    what this rank differentiates (the shared terms and its own shard's sparsity penalty),
    `f` is this rank's latents' codes; l0 is the whole SAE's."""

    objective: Tensor | None = None
    global_l0: float = 0.0
    pending: Tensor | None = None
    """This rank's sparsity penalty and non-zero codes, summed over the ranks by `grads`."""

    def l0(self) -> float:
        return self.global_l0


def _local_config(cfg: Any, n: int) -> Any:
    """The config of one shard's SAE: n latents (k clipped to them, no target: the whole
    SAE's selection and targets are the sharded SAE's own)."""
    changes: dict[str, Any] = {"d_sae": n, "target_l0": None}
    if hasattr(cfg, "k"):
        changes["k"] = min(cfg.k, n) if isinstance(cfg.k, int) else min(float(cfg.k), n)
    return dataclasses.replace(cfg, **changes)


class ShardedSAE(nn.Module):
    """Rank `group.rank`'s shard of an SAE: `local`, an SAE of the same architecture with
    this rank's latents (and copies of b_dec and W_skip). `cfg` is the whole SAE's."""

    def __init__(self, full: SAE, group: LatentGroup) -> None:
        super().__init__()
        check_shardable(full.cfg, group.size)
        self.cfg, self.group, self.arch = full.cfg, group, type(full)
        self.lo, self.hi = span(full.cfg.d_sae, group.rank, group.size)
        with torch.random.fork_rng(devices=[]):  # the shard's own init draws nothing shared
            self.local = make_sae(_local_config(full.cfg, self.hi - self.lo))
        self.local.sparse_mode = "dense"
        self.local.load_state_dict(self._slice(full))
        self.local.to(full.W_dec.device)
        self.live_density = 1.0
        self._b_side: Tensor | None = None

    @property
    def axes(self) -> dict[str, int]:
        return {**self.arch.latent_axes, **BUFFER_AXES}

    def _slice(self, full: SAE) -> dict[str, Tensor]:
        out = {}
        for name, t in full.state_dict().items():
            axis = self.axes.get(name)
            out[name] = t if axis is None else t.narrow(axis, self.lo, self.hi - self.lo)
        return out

    # ----- what the loop touches --------------------------------------------------------

    @property
    def W_dec(self) -> Tensor:
        return self.local.W_dec

    @property
    def b_dec(self) -> Tensor:
        return self.local.b_dec

    @property
    def W_skip(self) -> Tensor | None:
        return self.local.W_skip

    def replicated(self) -> list[nn.Parameter]:
        """The parameters every rank holds whole (b_dec, W_skip)."""
        return [p for p in (self.local.b_dec, self.local.W_skip) if p is not None]

    def normalise_decoder(self) -> None:
        self.local.normalise_decoder()

    def after_step(self, out: LossOutput) -> None:
        self.local.after_step(out)

    def _sum(self, t: Tensor) -> Tensor:
        return self.group.sum_(t) if self.group.size > 1 else t

    def _min(self, t: Tensor) -> Tensor:
        return self.group.min_(t) if self.group.size > 1 else t

    # ----- the loss ---------------------------------------------------------------------

    def pre_acts(self, x: Tensor, b_dec: Tensor | None = None) -> Tensor:
        """This rank's latents' pre-activations (N, n)."""
        loc = self.local
        if loc.cfg.apply_b_dec_to_input:
            x = x - (loc.b_dec if b_dec is None else b_dec)
        return x @ loc.W_enc + loc.b_enc

    def loss(self, x: Tensor, y: Tensor, ctx: LossContext | None = None) -> ShardOutput:
        """The whole SAE's loss terms on the batch (x, y), every rank's the same; this rank
        differentiates `objective` for the gradient of its shard (and of b_dec: `grads`)."""
        ctx, loc = ctx or LossContext(), self.local
        x = loc._flat(x)
        skip = None if loc.W_skip is None else x @ loc.W_skip.T
        target = y if skip is None else y.reshape(skip.shape) - skip
        self._b_side = loc.b_dec.detach().requires_grad_() if loc.cfg.apply_b_dec_to_input else None
        pre = self.pre_acts(x, self._b_side)
        f, sparsity, extras = self._activate(pre, ctx)
        y_hat = summed(f @ loc.W_dec, self.group) + loc.b_dec
        mse = loc.mse(target, y_hat)
        terms: dict[str, Tensor] = {"mse": mse}
        objective = mse + sparsity
        name = {"relu": "l1", "jumprelu": "l0"}.get(self.cfg.name)
        if name:
            terms[name] = sparsity.detach()  # this shard's part: `grads` sums it
        else:
            aux = self.cfg.aux_coef * self._auxk(pre, target, y_hat, ctx)
            terms["auxk"], objective = aux, objective + aux
        out_y = y_hat if skip is None else y_hat + skip.detach()
        out = ShardOutput(out_y, f, terms, extras, objective=objective)
        out.pending = torch.stack([sparsity.detach(), (f != 0).sum().to(pre.dtype)]).double()
        return out

    def _activate(self, pre: Tensor, ctx: LossContext) -> tuple[Tensor, Tensor, dict]:
        """This rank's codes, its part of the sparsity penalty (coefficient applied) and the
        extras the architecture's `after_step` reads."""
        name, cfg, zero = self.cfg.name, self.cfg, pre.new_zeros(())
        if name == "topk":
            keep = global_topk_mask(pre, cfg.k, self.lo, self.group)
            return torch.where(keep, pre.relu(), 0.0), zero, {}
        if name == "batchtopk":
            return self._batch_topk(pre)
        if name == "relu":
            f = pre.relu()
            coef = cfg.l1_coef * ctx.sparsity_scale
            if cfg.l1_mode == "unit":
                return f, coef * f.sum(-1).mean(), {}
            return f, coef * (f * self.local.W_dec.norm(dim=1)).sum(-1).mean(), {}
        theta, eps = self.local.threshold, cfg.bandwidth  # jumprelu
        f = ops.jumprelu(pre, theta, eps)
        return f, cfg.l0_coef * ctx.sparsity_scale * ops.step(pre, theta, eps).sum(-1).mean(), {}

    def _cut(self, values: Tensor, n_keep: int) -> Tensor:
        """The n_keep-th largest of every rank's values (each sends its n_keep largest)."""
        flat = values.detach().reshape(-1)
        cand = flat.topk(min(n_keep, flat.numel()), sorted=False).values
        if self.group.size == 1:
            return cand.min() if cand.numel() >= n_keep else flat.new_full((), float("-inf"))
        return self.group.kth_largest(cand, n_keep)

    def _smallest_kept(self, kept: Tensor) -> Tensor:
        positive = kept[kept > 0]
        here = positive.min() if positive.numel() else kept.new_full((), float("inf"))
        least = self._min(here.reshape(1).clone())[0]
        return least if bool(torch.isfinite(least)) else kept.new_zeros(())

    def _exactly(self, values: Tensor, cut: Tensor, n_keep: int) -> Tensor:
        """(values' shape) bool: the entries above the cut and, of those equal to it, as
        many as make n_keep over every rank, lower ranks and lower positions first (equal
        values are rows repeated in a batch, whose codes are the same whichever is kept)."""
        size, rank = self.group.size, self.group.rank
        above, equal = values > cut, values == cut
        counts = values.new_zeros(2 * size, dtype=torch.float64)
        counts[rank], counts[size + rank] = above.sum(), equal.sum()
        counts = self._sum(counts)
        room = n_keep - int(counts[:size].sum()) - int(counts[size : size + rank].sum())
        take = max(0, min(room, int(counts[size + rank])))
        keep = above.reshape(-1).clone()
        keep[equal.reshape(-1).nonzero().squeeze(1)[:take]] = True
        return keep.view_as(values)

    def _batch_topk(self, pre: Tensor) -> tuple[Tensor, Tensor, dict]:
        n_keep = ops.batch_topk_count(self.cfg.k, pre.shape[0], self.cfg.d_sae)
        f = pre.relu()
        values = f.detach()
        keep = self._exactly(values, self._cut(values, n_keep), n_keep) & (values > 0)
        min_kept = self._smallest_kept(values[keep])
        return f * keep, pre.new_zeros(()), {"min_kept": min_kept}

    def _auxk(self, pre: Tensor, y: Tensor, y_hat: Tensor, ctx: LossContext) -> Tensor:
        """AuxK over the whole SAE's dead latents: each row's k_aux largest among them (over
        every rank), decoded by the ranks that hold them and summed."""
        dead = ctx.dead
        local_dead = torch.zeros(self.hi - self.lo, dtype=torch.bool, device=pre.device)
        if dead is not None:
            local_dead = dead.to(pre.device)
        n_dead = int(self._sum(local_dead.sum().reshape(1).double())[0])
        k_aux = min(self.cfg.k_aux, n_dead)
        if k_aux == 0:
            return pre.new_zeros(())
        masked = pre.masked_fill(~local_dead, float("-inf"))
        keep = global_topk_mask(masked, k_aux, self.lo, self.group)
        z_aux = torch.where(keep, pre.relu(), 0.0)
        e = (y - y_hat).detach()
        return ops.fvu(e - summed(z_aux @ self.local.W_dec, self.group), e)

    # ----- gradients ----------------------------------------------------------------------

    @torch.no_grad()
    def grads(self, out: ShardOutput, project: bool, extra: Tensor) -> tuple[Tensor, Tensor]:
        """After backward, from one all-reduce: b_dec's whole gradient (its encoder part
        summed over the ranks), each decoder row's gradient without its part along the row
        (`project`), the whole SAE's sparsity penalty and L0 into `out`; returns the whole
        SAE's gradient norm (0-d) and `extra` (float64 flags) summed over the ranks."""
        loc = self.local
        if project and loc.W_dec.grad is not None:
            ops.remove_parallel_grad_(loc.W_dec.detach(), loc.W_dec.grad)
        rep = {id(p) for p in self.replicated()}
        own = [p.grad for p in loc.parameters() if id(p) not in rep and p.grad is not None]
        sq = torch.stack([g.double().pow(2).sum() for g in own]).sum().reshape(1)
        side = self._b_side.grad if self._b_side is not None else None
        side = loc.b_dec.new_zeros(loc.b_dec.shape) if side is None else side
        pending = out.pending if out.pending is not None else sq.new_zeros(2)
        flat = self._sum(torch.cat([side.double(), sq, pending, extra.to(sq)]))
        d, n = side.numel(), out.y_hat.shape[0]
        if self._b_side is not None:
            if loc.b_dec.grad is None:
                loc.b_dec.grad = torch.zeros_like(loc.b_dec)
            loc.b_dec.grad.add_(flat[:d].to(loc.b_dec.dtype))
        self._b_side = None
        name = {"relu": "l1", "jumprelu": "l0"}.get(self.cfg.name)
        if name:
            out.terms[name] = flat[d + 1].to(out.terms["mse"].dtype)
        out.global_l0 = float(flat[d + 2]) / max(n, 1)
        self.live_density = float(flat[d + 2]) / max(n * self.cfg.d_sae, 1)
        reps = [p.grad.double().pow(2).sum() for p in self.replicated() if p.grad is not None]
        return (flat[d] + sum(reps)).sqrt(), flat[d + 3 :]

    # ----- BatchTopK's final threshold --------------------------------------------------

    @torch.no_grad()
    def finish_training(self, xs: Sequence[Tensor]) -> dict[str, Any]:
        """BatchTopK's `finish_training` over the whole SAE: the smallest activation the
        batch top-k keeps in each of xs, from every rank's latents."""
        if self.cfg.name != "batchtopk":
            return {}
        threshold = self.local.threshold
        running = float(threshold[0])
        kept = []
        for x in xs:
            pre = self.pre_acts(x)
            n_keep = ops.batch_topk_count(self.cfg.k, pre.shape[0], self.cfg.d_sae)
            chosen = pre >= self._cut(pre, n_keep)
            kept.append((x.shape[0], float(self._smallest_kept(pre[chosen]))))
        return threshold_from_kept(threshold, kept, running, "batchtopk", self.cfg.k)

    # ----- the whole SAE ----------------------------------------------------------------

    @torch.no_grad()
    def gathered(self) -> SAE | None:
        """The whole SAE on rank 0's CPU (None on the other ranks): each tensor's shards
        sent to rank 0 one rank at a time and moved to its CPU as they come."""
        with torch.random.fork_rng(devices=[]):
            full = make_sae(self.cfg) if self.group.rank == 0 else None
        state: dict[str, Tensor] = {}
        for name, t in self.local.state_dict().items():
            axis = self.axes.get(name)
            if axis is None:
                state[name] = t.detach().cpu().clone()
                continue
            shapes = []
            for r in range(self.group.size):
                lo, hi = span(self.cfg.d_sae, r, self.group.size)
                shapes.append(tuple(hi - lo if a == axis else s for a, s in enumerate(t.shape)))
            parts = self.group.gather_to_0(t.detach().contiguous(), shapes)
            if parts is not None:
                state[name] = torch.cat([p.cpu() for p in parts], axis)
        if full is None:
            return None
        full.load_state_dict(state)
        return full.to(self.local.W_dec.dtype)

"""One optimiser step of one SAE, and what else changes its weights: the per-SAE training
state (`Slot`), the step itself (loss, backward, decoder-gradient projection, clipping, fused
Adam, renormalisation, running statistics, dead-latent counters) and the resampling of dead
latents (L1 SAEs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim.adam import adam as adam_functional

from saescope import lowp, ops
from saescope.saes import SAE, LossContext, LossOutput
from saescope.training.config import BadBatchError, TrainConfig
from saescope.training.group import Share
from saescope.training.target import L0Controller, controller_for


@dataclass
class Slot:
    """One SAE being trained and its training state."""

    sae: SAE
    opt: torch.optim.Adam
    scale_in: float = 1.0
    scale_out: float = 1.0
    since_fired: Tensor | None = None  # (d_sae,) tokens since each latent last fired
    last_log: dict[str, Any] | None = None
    controller: L0Controller | None = None  # steers the sparsity coefficient to target_l0

    def dead(self, dead_tokens: int) -> Tensor:
        """(d_sae,) bool: latents silent for at least `dead_tokens` tokens."""
        return self.since_fired >= dead_tokens  # type: ignore[operator]


def make_slots(saes: Sequence[SAE], cfg: TrainConfig) -> list[Slot]:
    slots = []
    for sae in saes:
        sae.to(cfg.device).train()
        # fused: one pass over each parameter's memory per step (the foreach default makes
        # about a dozen); equal to the default to float rounding, 4x faster for big SAEs.
        opt = torch.optim.Adam(
            sae.parameters(), lr=cfg.lr_for(sae), betas=(cfg.beta1, cfg.beta2), fused=True
        )
        fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=cfg.device)
        slots.append(Slot(sae, opt, since_fired=fired, controller=controller_for(sae)))
    return slots


def _check_loss(total: Tensor, step: int) -> None:
    if not torch.isfinite(total):
        raise BadBatchError(
            f"loss at step {step} is not finite ({float(total)}); weights and checkpoint are "
            "untouched. Lower the learning rate or check the data, then resume"
        )


def step(
    slot: Slot,
    x: Tensor,
    y: Tensor,
    step: int,
    cfg: TrainConfig,
    dead_tokens: int,
    share: Share | None = None,
) -> LossOutput:
    """One optimiser step on the batch (x, y), raw activations (scaled here). With `share`
    (data parallel) x and y are this process's rows, and the gradients, loss terms and fired
    latents become the whole batch's before anything changes."""
    sae, opt = slot.sae, slot.opt
    x_n = x * slot.scale_in
    y_n = x_n if y is x and slot.scale_out == slot.scale_in else y * slot.scale_out
    warmup = cfg.sparsity_factor(step)
    steer = slot.controller.scale() if slot.controller else 1.0
    ctx = LossContext(warmup * steer, slot.dead(dead_tokens))
    ctx.across = None if share is None else share.across
    out = sae.loss(x_n, y_n, ctx)
    if share is None:
        _check_loss(out.total, step)
    for p in sae.parameters():  # opt.zero_grad(set_to_none=True), without its overhead
        p.grad = None
    out.total.backward()
    fired = out.fired() if share is None else share.reduce(sae, out)
    if share is not None:  # the whole batch's loss, the same on every process
        _check_loss(out.total, step)
    if sae.cfg.unit_norm_decoder and sae.W_dec.grad is not None:
        ops.remove_parallel_grad_(sae.W_dec.detach(), sae.W_dec.grad)
    params = [p for p in sae.parameters() if p.grad is not None]
    if cfg.grad_clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    else:  # only its finiteness matters: one sum of the per-tensor norms
        norm = torch.stack(torch._foreach_norm([p.grad for p in params])).sum()  # type: ignore[misc]
    if not torch.isfinite(norm):
        raise BadBatchError(
            f"gradient at step {step} is not finite; weights and checkpoint are untouched. "
            "Lower the learning rate or check the data, then resume"
        )
    lr = cfg.lr_for(sae) * cfg.lr_factor(step)
    for group in opt.param_groups:
        group["lr"] = lr
    adam_step(opt)
    lowp.forget(sae.W_enc)  # its bf16 copy (precision bf16) is made again from the new weights
    if sae.cfg.unit_norm_decoder:
        sae.normalise_decoder()
    sae.after_step(out)
    if slot.controller and warmup >= 1.0:  # the target steers once the warm-up is over
        slot.controller.update(_batch_l0(out, share), cfg.lr_factor(step))
    tokens = x.shape[0] if share is None else share.kept_total
    slot.since_fired = torch.where(fired, 0, slot.since_fired + tokens)  # type: ignore[operator]
    return out


def _batch_l0(out: LossOutput, share: Share | None) -> float:
    """The step's L0 over the whole batch (every process's rows, with `share`), so that the
    target-L0 controller moves the same on every process."""
    if share is None:
        return out.l0()
    kept = share.kept
    return float(share.across.sum(torch.tensor(out.l0() * kept, dtype=torch.float64))) / max(
        share.kept_total, 1
    )


@torch.no_grad()
def resample(
    slot: Slot, x: Tensor, y: Tensor, out: LossOutput, dead: Tensor, gen: torch.Generator
) -> int:
    """Anthropic-style resampling (Bricken et al. 2023): each dead latent gets an input drawn
    with probability proportional to its squared reconstruction error; Adam state is reset.
    Samples come from the current batch (the paper draws from a larger pool)."""
    idx = dead.nonzero().flatten()
    if idx.numel() == 0:
        return 0
    err = (out.y_hat.detach() - y * slot.scale_out).pow(2).sum(-1)  # (N,)
    if not bool((err > 0).any()):
        return 0
    pick = torch.multinomial(err.double().cpu() ** 2, idx.numel(), replacement=True, generator=gen)
    pick = pick.to(x.device)
    sae = slot.sae
    x_n = x[pick] * slot.scale_in
    y_n = y[pick] * slot.scale_out - sae.b_dec
    if sae.W_skip is not None:  # what the decoder has to explain
        y_n = y_n - x_n @ sae.W_skip.T
    enc = x_n - sae.b_dec if sae.cfg.apply_b_dec_to_input else x_n
    sae.resample_latents(idx, enc, y_n)
    for name, p in sae.named_parameters():
        axis = sae.latent_axes.get(name)
        state = slot.opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if axis is not None and key in state:
                state[key].index_fill_(axis, idx, 0.0)
    slot.since_fired[idx] = 0  # type: ignore[index]
    return idx.numel()


def _same_memory_view(ts: Sequence[Tensor]) -> list[Tensor] | None:
    """The tensors as contiguous views of their memory, when all share one layout: as they
    are, or all transposed (W_enc is stored latent-major); else None."""
    if any(t.stride() != ts[0].stride() for t in ts):
        return None
    if ts[0].is_contiguous():
        return list(ts)
    if ts[0].dim() == 2 and ts[0].t().is_contiguous():
        return [t.t() for t in ts]
    return None


def _plain_fused(group: dict[str, Any]) -> bool:
    """Whether a parameter group is fused Adam with no option the shortcut does not cover."""
    extras = ("amsgrad", "capturable", "differentiable", "decoupled_weight_decay")
    return bool(group.get("fused")) and not any(group.get(k) for k in extras)


@torch.no_grad()
def adam_step(opt: torch.optim.Adam) -> None:
    """opt.step() for a fused Adam, with each transposed tensor handed to the fused kernel as
    its contiguous transpose. Adam is elementwise, so the result is the same, but the kernel
    would otherwise copy such a tensor (W_enc, its gradient and its moments) to contiguous
    memory and back, ~6 ms a step at d_in 512 x d_sae 8192. Falls back to opt.step() for the
    first step (which creates the state) and any setting the shortcut does not cover."""
    lists: list[list[list[Tensor]]] = []
    for group in opt.param_groups:
        if not _plain_fused(group):
            return opt.step()  # type: ignore[func-returns-value]
        ps, gs, ms, vs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            st = opt.state.get(p, {})
            if "exp_avg" not in st or p.grad.is_sparse:
                return opt.step()  # type: ignore[func-returns-value]
            views = _same_memory_view([p, p.grad, st["exp_avg"], st["exp_avg_sq"]])
            if views is None:
                return opt.step()  # type: ignore[func-returns-value]
            for acc, v in zip((ps, gs, ms, vs), views, strict=True):
                acc.append(v)
            steps.append(st["step"])
        lists.append([ps, gs, ms, vs, steps])
    for group, (ps, gs, ms, vs, steps) in zip(opt.param_groups, lists, strict=True):
        beta1, beta2 = group["betas"]
        adam_functional(  # the functional form opt.step() itself calls
            ps,
            gs,
            ms,
            vs,
            [],
            steps,
            fused=True,
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
        )
    return None

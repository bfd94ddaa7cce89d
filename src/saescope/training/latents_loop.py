"""Training one SAE whose latents are sharded over a group of processes (`--parallel latents`,
`training.latents.ShardedSAE`): the loop of `training.loop` with the sharded step.

Every rank reads the whole batch (no exchange of inputs: a file or a cache reads it again, a
model on the fly runs on every rank; the batch is N x d_in, as large as one reconstruction
all-reduce), so what the loop estimates from data (normalisation, b_dec, outliers) is the
same on every rank without a collective. Each rank's Adam holds only its shard's moments.
Checkpoints: rank 0 writes the run's checkpoint.safetensors (its shard, the position, the
meta) and rank r > 0 its shard to latents/rank{r}.step{S}.safetensors, all at the same step
(ranks agree on it and on a stop request in one small all-reduce per step); a shard's older
files go once rank 0's checkpoint names the new step, so a kill at any point leaves a
consistent set. The final SAE is gathered on rank 0's CPU and saved as a normal SAE.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from saescope import ops
from saescope.atomic import atomic_save_tensors
from saescope.errors import ConfigError, FormatError, InputError
from saescope.saes import SAE, LossContext
from saescope.training import checkpoint, finish, interrupt, logs, loop, optim
from saescope.training.checkpoint import CHECKPOINT_FILE, METRICS_FILE, Position
from saescope.training.config import BadBatchError, TrainConfig
from saescope.training.group import Solo
from saescope.training.latents import ShardedSAE, ShardOutput
from saescope.training.optim import Slot
from saescope.training.shards import LatentGroup
from saescope.training.target import controller_for

SHARD_DIR = "latents"


class _Whole(Solo):
    """The batch as every rank of a latent-sharded group sees it: whole (one process's
    answers), with this process's rank (only rank 0 writes)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank


def shard_file(out_dir: Path, rank: int, step: int) -> Path:
    return out_dir / SHARD_DIR / f"rank{rank}.step{step}.safetensors"


def _slot(sharded: ShardedSAE, cfg: TrainConfig) -> Slot:
    sharded.local.to(cfg.device).train()
    opt = torch.optim.Adam(
        sharded.parameters(), lr=cfg.lr_for(sharded), betas=(cfg.beta1, cfg.beta2), fused=True
    )
    fired = torch.zeros(sharded.hi - sharded.lo, dtype=torch.long, device=cfg.device)
    return Slot(sharded, opt, since_fired=fired, controller=controller_for(sharded))  # type: ignore[arg-type]


# ----- one step ----------------------------------------------------------------------------


def step(
    slot: Slot,
    x: Tensor,
    y: Tensor,
    at: int,
    cfg: TrainConfig,
    dead: int,
    flags: Tensor | None = None,
) -> tuple[ShardOutput, Tensor]:
    """`optim.step` for a sharded SAE: the same on every rank but for its shard's part.
    `flags` (float64) are summed over the ranks with the gradients and returned."""
    sae: ShardedSAE = slot.sae  # type: ignore[assignment]
    x_n = x * slot.scale_in
    y_n = x_n if y is x and slot.scale_out == slot.scale_in else y * slot.scale_out
    warmup = cfg.sparsity_factor(at)
    steer = slot.controller.scale() if slot.controller else 1.0
    out = sae.loss(x_n, y_n, LossContext(warmup * steer, slot.dead(dead)))
    for p in sae.parameters():
        p.grad = None
    out.objective.backward()  # type: ignore[union-attr]
    flags = torch.zeros(0, dtype=torch.float64) if flags is None else flags
    norm, flags = sae.grads(out, bool(sae.cfg.unit_norm_decoder), flags)
    optim._check_loss(out.total, at)  # the whole SAE's loss: every rank raises together
    params = [p for p in sae.parameters() if p.grad is not None]
    if cfg.grad_clip is not None:
        coef = (cfg.grad_clip / (norm + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_([p.grad for p in params], coef.to(params[0].dtype))  # type: ignore[misc]
    if not torch.isfinite(norm):
        raise BadBatchError(
            f"gradient at step {at} is not finite; weights and checkpoint are untouched. "
            "Lower the learning rate or check the data, then resume"
        )
    for group in slot.opt.param_groups:
        group["lr"] = cfg.lr_for(sae) * cfg.lr_factor(at)  # type: ignore[arg-type]
    optim.adam_step(slot.opt)
    if sae.cfg.unit_norm_decoder:
        sae.normalise_decoder()
    sae.after_step(out)
    if slot.controller and warmup >= 1.0:
        slot.controller.update(out.l0(), cfg.lr_factor(at))
    slot.since_fired = torch.where(out.fired(), 0, slot.since_fired + x.shape[0])  # type: ignore[operator]
    return out, flags


@torch.no_grad()
def resample(
    slot: Slot, x: Tensor, y: Tensor, out: ShardOutput, dead_tokens: int, gen: torch.Generator
) -> int:
    """`optim.resample` over the whole SAE's dead latents: the inputs are drawn for all of
    them at once (the same draw on every rank), each rank takes those of its own, and the
    encoder norm of the live latents is the whole SAE's mean."""
    sae: ShardedSAE = slot.sae  # type: ignore[assignment]
    group, loc = sae.group, sae.local
    dead = slot.dead(dead_tokens)
    norms = loc.W_enc.norm(dim=0)
    counts = torch.zeros(2 * group.size + 1, dtype=torch.float64, device=norms.device)
    counts[group.rank] = float(dead.sum())
    counts[group.size + group.rank] = float(norms[~dead].sum())
    counts = sae._sum(counts)
    n_dead = counts[: group.size].long()
    total = int(n_dead.sum())
    err = (out.y_hat.detach() - y * slot.scale_out).pow(2).sum(-1)
    if total == 0 or not bool((err > 0).any()):
        return 0
    pick = torch.multinomial(err.double().cpu() ** 2, total, replacement=True, generator=gen)
    first = int(n_dead[: group.rank].sum())
    idx = dead.nonzero().flatten()
    if idx.numel() == 0:
        return 0
    mine = pick[first : first + idx.numel()].to(x.device)
    alive = sae.cfg.d_sae - total
    enc_norm = float(counts[group.size :].sum()) / alive if alive else 1.0
    x_n = x[mine] * slot.scale_in
    y_n = y[mine] * slot.scale_out - loc.b_dec
    if loc.W_skip is not None:
        y_n = y_n - x_n @ loc.W_skip.T
    enc = x_n - loc.b_dec if loc.cfg.apply_b_dec_to_input else x_n
    dec_norm = 1.0 if loc.cfg.unit_norm_decoder else loc.decoder_init_norm
    loc.W_dec[idx] = ops.unit_rows(y_n) * dec_norm
    loc.W_enc[:, idx] = (ops.unit_rows(enc) * 0.2 * enc_norm).T
    for name in loc._per_latent_vectors():
        getattr(loc, name)[idx] = loc._initial(name)
    for name, p in loc.named_parameters():
        axis, state = loc.latent_axes.get(name), slot.opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if axis is not None and key in state:
                state[key].index_fill_(axis, idx, 0.0)
    slot.since_fired[idx] = 0  # type: ignore[index]
    return idx.numel()


# ----- checkpoints -------------------------------------------------------------------------


def _flags(group: LatentGroup, due: bool, signum: int | None) -> Tensor:
    """This rank's part of the step's flags: rank 0's checkpoint decision (its clock
    decides) and a stop request (summed over the ranks with the gradients)."""
    return torch.tensor([float(due and group.rank == 0), float(signum is not None)]).double()


def _agreed(flags: Tensor, signum: int | None) -> tuple[bool, int]:
    """Whether to checkpoint after this step, and the signal that stops every rank (0)."""
    return bool(flags[0] > 0), (signum or signal.SIGTERM) if float(flags[1]) > 0 else 0


def _write(out: Path, slot: Slot, gen: torch.Generator, meta: dict, group: LatentGroup) -> None:
    """Every rank's shard at the same step; older shard files go once rank 0's checkpoint
    (written after every shard) names the new step."""
    barrier = torch.zeros(1)
    if group.rank:
        tensors = checkpoint._tensors([slot], gen)
        step_meta = {"saescope_shard": str(meta["step"])}
        atomic_save_tensors(shard_file(out, group.rank, meta["step"]), tensors, step_meta)
    group.sum_(barrier)
    if group.rank == 0:
        checkpoint.write(out, [slot], gen, meta)
    group.sum_(barrier)
    if group.rank:
        for old in (out / SHARD_DIR).glob(f"rank{group.rank}.step*.safetensors"):
            if old != shard_file(out, group.rank, meta["step"]):
                old.unlink(missing_ok=True)


def _resume(
    slot: Slot,
    cfg: TrainConfig,
    out: Path | None,
    gen: torch.Generator,
    metadata: dict[str, Any],
    group: LatentGroup,
) -> Position:
    main = out / CHECKPOINT_FILE if out else None
    if main is None or not main.is_file():
        raise FormatError(f"nothing to resume: no {CHECKPOINT_FILE} in {out}; drop --resume")
    tensors, meta = checkpoint.read(main)
    if (meta.get("run") or {}).get("parallel") != "latents":
        raise ConfigError(
            f"cannot resume {out} with --parallel latents: it was not trained with latents "
            "sharded; resume it as it was launched"
        )
    checkpoint.check_world_size(meta.get("world_size", 1), group.size, out)
    meta["train"]["lr"] = checkpoint.recorded_lr(meta, [slot.sae])  # an older one's too
    checkpoint.check_same_run(meta, cfg, metadata)
    if group.rank:
        path = shard_file(out, group.rank, meta["step"])  # type: ignore[arg-type]
        if not path.is_file():
            raise FormatError(f"{path} is missing: rank {group.rank}'s shard of the checkpoint")
        tensors = load_file(path)
    checkpoint.restore([slot], tensors, meta, gen)
    if group.rank == 0:
        checkpoint.truncate_log(out / METRICS_FILE, meta["step"])  # type: ignore[operator]
    return Position.from_meta(meta)


# ----- the run -----------------------------------------------------------------------------


def _log(slot: Slot, out: ShardOutput, y: Tensor, pos: Position, group: LatentGroup) -> dict:
    row = logs.log_row(slot, y, out, pos)
    dead = slot.dead(pos.dead_tokens).sum().double().reshape(1)
    dead = group.sum_(dead) if group.size > 1 else dead
    row["dead_fraction"] = float(dead[0]) / slot.sae.cfg.d_sae
    return row


def _fp32(cfg: TrainConfig, rank: int) -> TrainConfig:
    """cfg at fp32, the one precision latents mode runs at for now: bf16 is refused in one
    line; auto settles to fp32 (saying so, where rank 0 shows progress) and is recorded so."""
    if cfg.precision == "bf16":
        raise ConfigError("--parallel latents runs in fp32 for now; use --precision fp32")
    if cfg.precision == "auto" and cfg.progress and rank == 0:
        print("precision: fp32 (auto: --parallel latents runs in fp32 for now)")
    return dataclasses.replace(cfg, precision="fp32")


def train_latents(
    sae: SAE,
    batches: Iterable[Any],
    group: LatentGroup,
    cfg: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
    log: tuple[str, ...] | list[str] = (),
) -> loop.TrainResult:
    """`training.train` for one SAE whose latents are sharded over `group`; every rank
    gives the whole batches. Rank 0 writes (and returns the whole SAE); the other ranks
    return no SAE. It runs in fp32 (`_fp32`)."""
    cfg = _fp32(cfg or TrainConfig(), group.rank)
    cfg = checkpoint.settle_lr(cfg, [sae], out_dir, resume)
    logs.check(log, out_dir)
    sharded = ShardedSAE(sae, group)
    slot = _slot(sharded, cfg)
    metadata = {**(metadata or {}), "parallel": "latents"}
    out_path = Path(out_dir) if out_dir is not None else None
    writes = out_path if group.rank == 0 else None
    gen = torch.Generator().manual_seed(cfg.seed)
    whole = _Whole(group.rank)
    if resume:
        pos = _resume(slot, cfg, out_path, gen, metadata, group)
        open_at = functools.partial(loop._stream, batches, device=cfg.device)
        tail, stream = finish.resumed(cfg.steps, pos, open_at, cfg.device)
    else:
        pos, stream = loop._start_fresh([slot], batches, cfg, out_path, overwrite, whole)
        tail = finish.Tail(cfg.steps)
    bar = tqdm(
        total=cfg.steps, initial=pos.step, disable=not cfg.progress or writes is None, desc="train"
    )
    log_file = open(writes / METRICS_FILE, "a") if writes else None
    clock = logs.Clock(pos)
    loggers = logs.open_logs(log if writes else (), writes, 1, pos.step)
    stop = interrupt.StopRequest.install(active=out_path is not None)
    saved_at = time.monotonic()
    try:
        for at in range(pos.step, cfg.steps):
            batch = next(stream, None)
            if batch is None:
                raise InputError(
                    f"the batch stream ended after {at} batches but steps={cfg.steps}; "
                    "give more data or fewer steps"
                )
            x, y, rows, _ = loop._prepare(batch, [slot], at, pos, cfg, whole, None)
            tail.keep(at, x, rows)
            due = out_path is not None and loop._checkpoint_due(cfg, at + 1, saved_at)
            out, flags = step(slot, x, y, at, cfg, pos.dead_tokens, _flags(group, due, stop.signum))
            pos.step, pos.tokens = at + 1, pos.tokens + rows
            if loop._resample_due(cfg, pos) and sae.cfg.dead_latent_strategy == "resample":
                resample(slot, x, y, out, pos.resample_tokens, gen)
            if pos.step % cfg.log_every == 0 or pos.step == cfg.steps:
                slot.last_log = {"sae": 0, **_log(slot, out, y, pos, group), **clock.fields(pos)}
                if log_file:
                    log_file.write(json.dumps(slot.last_log) + "\n")
                    log_file.flush()
                for logger in loggers:
                    logger.write(slot.last_log)
            bar.update(1)
            due, signum = _agreed(flags, stop.signum)
            if out_path is not None and (due or signum):
                pos.elapsed = clock.elapsed()
                _write(
                    out_path,
                    slot,
                    gen,
                    checkpoint.meta(cfg, [slot], pos, metadata, group.size),
                    group,
                )
                saved_at = time.monotonic()
            if signum and pos.step < cfg.steps:
                raise interrupt.Interrupted(signum, pos.step, out_path)
    finally:
        stop.restore()
        bar.close()
        if log_file:
            log_file.close()
        for logger in loggers:
            logger.close()
    finish.finish([slot], tail)
    full = sharded.gathered()
    if full is None:
        return loop.TrainResult([], [slot.last_log or {}], out_path)
    done = Slot(full, slot.opt, slot.scale_in, slot.scale_out, None, slot.last_log, slot.controller)
    final = loop._save_final([done], cfg, writes, metadata, pos)
    return loop.TrainResult(final, [slot.last_log or {}], out_path)

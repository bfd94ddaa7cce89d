"""The one training loop, for every architecture and for several SAEs on one batch stream.

It sees only an iterable of (x, y) batches, never a language model. Per step and per SAE
(`optim.step`): normalise the batch (E||x|| = sqrt(d_in)), compute the loss terms, backward,
remove the decoder gradient parallel to each unit-norm decoder row, clip, Adam, renormalise,
update running stats and dead-latent counters; resample dead latents (L1 SAEs) or feed them to
AuxK (TopK family); log; checkpoint atomically (`checkpoint`), by steps and by wall time, and
on SIGINT or SIGTERM before stopping (`interrupt`). `resume=True` continues
bitwise-identically from the last checkpoint. With a `group` of processes (data parallel,
`saescope.parallel`) each trains on its share of every batch and the loop asks the group for
the whole batch where it needs it (`training.group`); only rank 0 writes.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saescope import ops, sparse
from saescope.data.outliers import OutlierRule
from saescope.data.stream import device_stream, on_device
from saescope.errors import ConfigError, InputError
from saescope.saes import SAE, LossOutput, save
from saescope.training import checkpoint, finish, interrupt, logs, mixed, optim, target
from saescope.training.checkpoint import METRICS_FILE, Position
from saescope.training.config import BadBatchError, TrainConfig
from saescope.training.group import SOLO, Group, Share, same_weights, whole
from saescope.training.optim import Slot


@dataclass
class TrainResult:
    """What training returns: the trained SAEs (taking raw activations) and the last metrics."""

    saes: list[SAE]
    final_metrics: list[dict[str, Any]]
    out_dir: Path | None = None


def folded_copy(sae: SAE, scale_in: float, scale_out: float) -> SAE:
    """A copy of the SAE that takes raw activations (normalisation folded into the weights)."""
    out = copy.deepcopy(sae)
    out.fold_scale(scale_in, scale_out)
    out.precision = "fp32"  # whatever the precision it was trained at
    return out.eval()


def sae_dirs(out_dir: Path, n: int) -> list[Path]:
    """Where each SAE of a run is saved: the run folder itself for one SAE, else sae_{i}/."""
    return [out_dir] if n == 1 else [out_dir / f"sae_{i}" for i in range(n)]


# ----- batches ------------------------------------------------------------------------------


def _stream(batches: Iterable[Any], start: int, device: str) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches from position `start` on the device: a direct jump where the stream supports
    it; on CUDA from pinned memory, the next batch read ahead (`data.stream.device_stream`)."""
    return device_stream(batches, start, device)


def _check_batch(
    x: Tensor, y: Tensor, slots: Sequence[Slot], step: int, finite: bool = True
) -> None:
    """Shapes, and with `finite` the values (a group checks those together: `_prepare`)."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise InputError(
            f"batch at step {step}: x {tuple(x.shape)} and y {tuple(y.shape)} must be (N, d) "
            "with the same N"
        )
    for cfg in (s.sae.cfg for s in slots):
        if x.shape[1] != cfg.d_in or y.shape[1] != cfg.d_out:
            raise InputError(
                f"batch at step {step} has d_in={x.shape[1]}, d_out={y.shape[1]} but the SAE "
                f"expects d_in={cfg.d_in}, d_out={cfg.d_out}; build the SAE for this data"
            )
    if finite and not (_finite(x) and (y is x or _finite(y))):
        raise _bad_batch(step)


def _bad_batch(step: int) -> BadBatchError:
    return BadBatchError(
        f"batch at step {step} contains NaN or Inf; weights and checkpoint are untouched. "
        "Clean the data (or drop that batch) and resume"
    )


def _finite(t: Tensor) -> bool:
    """Whether every entry is finite: a NaN or an infinity makes the sum non-finite, so one
    cheap sum decides, and only a non-finite sum (or an overflowing one) is checked entry by
    entry."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _prepare(
    batch: tuple[Tensor, Tensor],
    slots: Sequence[Slot],
    step: int,
    pos: Position,
    cfg: TrainConfig,
    group: Group,
    signum: int | None,
) -> tuple[Tensor, Tensor, int, Share | None]:
    """The step's batch on the device, checked, its outlier tokens set aside (counted in
    pos): x, y, the rows the stream gave, and with several processes the step's `Share` (the
    whole batch's counts; every process raises together on NaN or Inf anywhere)."""
    x, y = on_device(batch, cfg.device)
    _check_batch(x, y, slots, step, finite=group.size == 1)
    bad = group.size > 1 and not (_finite(x) and (y is x or _finite(y)))
    rows, dropped = x.shape[0], 0
    if pos.outlier_rule is not None:
        x, y, dropped = pos.outlier_rule.split(x, y)
    share = Share.of(group, rows, x.shape[0], bad, signum) if group.size > 1 else None
    if share is not None:
        if share.bad:
            raise _bad_batch(step)
        rows, dropped = share.rows, share.set_aside
    pos.set_aside += dropped
    if pos.outlier_rule is not None and (x.shape[0] if share is None else share.kept_total) == 0:
        raise InputError(
            f"every token of the batch at step {step} is an outlier (norm above "
            f"{pos.outlier_rule.factor}x the median); use larger batches or a "
            "larger outlier_factor"
        )
    return x, y, rows, share


# ----- a fresh start: initialisation from data ------------------------------------------------


def _take_init(
    stream: Iterator[tuple[Tensor, Tensor]], n: int, group: Group
) -> tuple[list[tuple[Tensor, Tensor]], list[tuple[Tensor, Tensor]]]:
    """The first batches covering >= n tokens (they are trained on afterwards, too), as this
    process reads them and whole (every process's rows: the same on each)."""
    taken: list[tuple[Tensor, Tensor]] = []
    wholes: list[tuple[Tensor, Tensor]] = []
    tokens = 0
    while tokens < n:
        try:
            b = next(stream)
        except StopIteration:
            break
        taken.append(b)
        wholes.append(whole(group, b))
        tokens += wholes[-1][0].shape[0]
    if not taken:
        raise InputError("the batch stream is empty; give it at least one batch")
    return taken, wholes


@torch.no_grad()
def _init_from_data(slot: Slot, x: Tensor, y: Tensor, cfg: TrainConfig) -> None:
    sae = slot.sae
    if cfg.normalise:
        slot.scale_in = math.sqrt(sae.cfg.d_in) / float(x.norm(dim=1).mean().clamp_min(1e-12))
        slot.scale_out = (
            slot.scale_in
            if sae.cfg.apply_b_dec_to_input
            else math.sqrt(sae.cfg.d_out) / float(y.norm(dim=1).mean().clamp_min(1e-12))  # type: ignore[arg-type]
        )
    y_n = y * slot.scale_out
    if cfg.b_dec_init == "geometric_median":
        sae.b_dec.copy_(ops.geometric_median(y_n).to(sae.b_dec.dtype))
    elif cfg.b_dec_init == "mean":
        sae.b_dec.copy_(y_n.mean(0))


def _start_fresh(
    slots: list[Slot],
    batches: Iterable[Any],
    cfg: TrainConfig,
    out_path: Path | None,
    overwrite: bool,
    group: Group,
) -> tuple[Position, Iterator[tuple[Tensor, Tensor]]]:
    """Normalisation scales and b_dec from the first batches (which are then trained on),
    whole: every process computes them from the same rows."""
    if out_path and (out_path / checkpoint.CHECKPOINT_FILE).is_file() and not overwrite:
        raise ConfigError(
            f"{out_path} already holds a run; resume it (--resume), choose another folder, "
            "or pass --overwrite"
        )
    stream = _stream(batches, 0, cfg.device)
    taken, first = _take_init(stream, cfg.init_samples, group)
    x0 = torch.cat([b[0] for b in first]).to(cfg.device)
    y0 = x0 if first[0][1] is first[0][0] else torch.cat([b[1] for b in first]).to(cfg.device)
    for s in slots:
        _check_batch(x0, y0, [s], 0)
    rule = OutlierRule.fit(x0, y0, cfg.outlier_factor) if cfg.outlier_factor else None
    if rule is not None:
        x0, y0, _ = rule.split(x0, y0)
        if x0.shape[0] == 0:
            raise InputError(
                "every token of the first batches is an outlier; raise outlier_factor or "
                "train on every token (outlier_factor None, --keep-outliers)"
            )
    for s in slots:
        _init_from_data(s, x0, y0, cfg)
    if out_path and group.rank == 0:
        out_path.mkdir(parents=True, exist_ok=True)
        (out_path / METRICS_FILE).unlink(missing_ok=True)
    pos = Position.start(cfg, first[0][0].shape[0], rule)
    return pos, itertools.chain(taken, stream)


# ----- logging and saving --------------------------------------------------------------------


def outlier_record(pos: Position) -> dict[str, Any] | None:
    """What cfg.json says about the run's outlier tokens: the rule and how many it set aside."""
    if pos.outlier_rule is None:
        return None
    return {**pos.outlier_rule.to_dict(), "set_aside": pos.set_aside, "tokens": pos.tokens}


def _save_final(
    slots: Sequence[Slot],
    cfg: TrainConfig,
    out_path: Path | None,
    metadata: dict[str, Any] | None,
    pos: Position,
) -> list[SAE]:
    final = [folded_copy(s.sae, s.scale_in, s.scale_out) for s in slots]
    reached = [target.record(sae, s.controller) for s, sae in zip(slots, final, strict=True)]
    if out_path:
        for s, sae, path, steered in zip(
            slots, final, sae_dirs(out_path, len(slots)), reached, strict=True
        ):
            training = dataclasses.replace(cfg, lr=cfg.lr_for(s.sae))  # the rate used
            meta = {
                "training": checkpoint.jsonable(dataclasses.asdict(training)),
                "normalisation": {"scale_in": s.scale_in, "scale_out": s.scale_out, "folded": True},
                "outliers": outlier_record(pos),
                "final_metrics": s.last_log,
                **({"target_l0": steered} if steered else {}),
                **(metadata or {}),
            }
            save(sae, path, meta)
    return final


# ----- the loop -----------------------------------------------------------------------------


def _checkpoint_due(cfg: TrainConfig, step: int, saved_at: float) -> bool:
    """Every `checkpoint_every` steps, once `checkpoint_minutes` have passed since the last
    checkpoint (saved_at, by time.monotonic()), and at the end. A checkpoint after any step
    resumes bitwise, so the wall-clock trigger changes no result."""
    by_steps = cfg.checkpoint_every and step % cfg.checkpoint_every == 0
    late = cfg.checkpoint_minutes and time.monotonic() - saved_at >= 60 * cfg.checkpoint_minutes
    return bool(by_steps or late or step == cfg.steps)


def _resample_due(cfg: TrainConfig, pos: Position) -> bool:
    every, step = pos.resample_every, pos.step
    return bool(every) and step % every == 0 and step < 0.6 * cfg.steps


def _resample(
    slots: Sequence[Slot],
    outs: Sequence[LossOutput],
    x: Tensor,
    y: Tensor,
    pos: Position,
    gen: torch.Generator,
    share: Share | None,
) -> None:
    """Resample the dead latents of the SAEs that do so, from the whole batch."""
    for s, out in zip(slots, outs, strict=True):
        if s.sae.cfg.dead_latent_strategy == "resample":
            xs, ys, o = (x, y, out) if share is None else share.gathered(x, y, out)
            optim.resample(s, xs, ys, o, s.dead(pos.resample_tokens), gen)


def train(
    saes: SAE | Sequence[SAE],
    batches: Iterable[Any],
    cfg: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
    log: Sequence[str] = (),
    group: Group | None = None,
) -> TrainResult:
    """Train one SAE, or several on the same batch stream in one pass (a sweep over k or l1).

    batches: an iterable of (x, y) pairs (or tensors x, meaning y = x), x (N, d_in).
    out_dir: where metrics.jsonl, checkpoints and the final SAE folder(s) go.
    resume: continue from out_dir's checkpoint; the result is bitwise what an uninterrupted
    run gives (on CPU) when the stream is deterministic. Refused when `metadata` (what the
    caller says the run is, e.g. `runs.DataSpec.to_dict()` of its data) differs from the
    checkpoint's.
    overwrite: start afresh in an out_dir that already holds a run (otherwise an error).
    log: loggers beside metrics.jsonl (`logs.LOGGERS`: "tensorboard"); not a training setting,
    so a run may be resumed with others.
    group: the processes training together, each on its share of every batch (data
    parallel, `saescope.parallel`; `batches` then gives this process's rows); only rank 0
    writes. None: this process alone.
    cfg.precision: auto is settled here (`training.mixed`); the saved SAEs are float32.
    cfg.lr None: the default rate, recorded as used (`checkpoint.settle_lr`).
    """
    cfg = mixed.settle(cfg or TrainConfig(), out_dir, resume, (group or SOLO).rank)
    cfg = checkpoint.settle_lr(cfg, [saes] if isinstance(saes, SAE) else saes, out_dir, resume)
    with mixed.applied(saes, cfg) as listed:
        return _train(listed, batches, cfg, out_dir, resume, metadata, overwrite, log, group)


def _train(
    saes: list[SAE],
    batches: Iterable[Any],
    cfg: TrainConfig,
    out_dir: str | Path | None,
    resume: bool,
    metadata: dict[str, Any] | None,
    overwrite: bool,
    log: Sequence[str],
    group: Group | None,
) -> TrainResult:
    """`train` at a settled precision."""
    logs.check(log, out_dir)
    slots = optim.make_slots(saes, cfg)
    if not slots:
        raise ConfigError("train needs at least one SAE")
    out_path = Path(out_dir) if out_dir is not None else None
    group = group or SOLO
    writes = out_path if group.rank == 0 else None  # the one process that writes
    gen = torch.Generator().manual_seed(cfg.seed)
    if resume:
        pos = checkpoint.resume(slots, cfg, out_path, gen, metadata, group.size, bool(writes))
        open_at = functools.partial(_stream, batches, device=cfg.device)
        tail, stream = finish.resumed(cfg.steps, pos, open_at, cfg.device, group.gather)
    else:
        pos, stream = _start_fresh(slots, batches, cfg, out_path, overwrite, group)
        tail = finish.Tail(cfg.steps, gather=group.gather)
    same_weights([s.sae for s in slots], group)

    quiet = not cfg.progress or writes is None
    bar = tqdm(total=cfg.steps, initial=pos.step, disable=quiet, desc="train", unit="step")
    log_file = open(writes / METRICS_FILE, "a") if writes else None
    clock = logs.Clock(pos)
    loggers = logs.open_logs(log if writes else (), writes, len(slots), pos.step)
    stop = interrupt.StopRequest.install(active=out_path is not None)  # SIGINT, SIGTERM
    saved_at = time.monotonic()
    try:
        for step in range(pos.step, cfg.steps):
            batch = next(stream, None)
            if batch is None:
                raise InputError(
                    f"the batch stream ended after {step} batches but steps={cfg.steps}; "
                    "give more data or fewer steps"
                )
            x, y, rows, share = _prepare(batch, slots, step, pos, cfg, group, stop.signum)
            tail.keep(step, x, rows)
            outs = [optim.step(s, x, y, step, cfg, pos.dead_tokens, share) for s in slots]
            pos.step, pos.tokens = step + 1, pos.tokens + rows
            if _resample_due(cfg, pos):
                _resample(slots, outs, x, y, pos, gen, share)
            if pos.step % cfg.log_every == 0 or pos.step == cfg.steps:
                logs.write_rows(slots, outs, y, pos, log_file, bar, clock, loggers, share)
            bar.update(1)
            signum = stop.signum if share is None else share.stop  # a group stops together
            if writes and (_checkpoint_due(cfg, pos.step, saved_at) or signum):
                pos.elapsed = clock.elapsed()
                meta = checkpoint.meta(cfg, slots, pos, metadata, group.size)
                checkpoint.write(writes, slots, gen, meta)
                saved_at = time.monotonic()
            if signum and pos.step < cfg.steps:
                raise interrupt.Interrupted(signum, pos.step, out_path)
    finally:
        stop.restore()
        bar.close()
        sparse.release_buffers()
        if log_file:
            log_file.close()
        for logger in loggers:
            logger.close()
    finish.finish(slots, tail)  # e.g. BatchTopK's threshold, from the final weights
    final = _save_final(slots, cfg, writes, metadata, pos)
    return TrainResult(final, [s.last_log or {} for s in slots], out_path)

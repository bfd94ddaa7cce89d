"""The one training loop, for every architecture and for several SAEs on one batch stream.

It sees only an iterable of (x, y) batches, never a language model. Per step and per SAE:
normalise the batch (E||x|| = sqrt(d_in)), compute the loss terms, backward, remove the decoder
gradient parallel to each unit-norm decoder row, clip, Adam, renormalise, update running stats
and dead-latent counters; resample dead latents (L1 SAEs) or feed them to AuxK (TopK family);
log; checkpoint atomically. `resume=True` continues bitwise-identically from the last checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor
from torch.optim.adam import adam as adam_functional
from tqdm.auto import tqdm

from saescope import metrics, ops, sparse
from saescope.atomic import atomic_save_tensors
from saescope.errors import ConfigError, FormatError, InputError
from saescope.saes import SAE, LossContext, LossOutput, save

CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_VERSION = 1


class BadBatchError(InputError):
    """A batch (or the loss it produced) held NaN or Inf; nothing was updated."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Everything about the SAE itself lives in its own config."""

    steps: int = 3000
    """Optimiser steps (one batch each)."""
    lr: float | None = None
    """Adam learning rate; default 2e-4 / sqrt(d_sae / 2^14) (Gao et al. 2024 scaling)."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.999
    """Adam beta2."""
    lr_warmup: float = 0.01
    """Fraction of steps over which the learning rate rises linearly from 0."""
    lr_decay_start: float = 0.8
    """Fraction of steps after which the learning rate decays linearly to 0."""
    sparsity_warmup: float = 0.05
    """Fraction of steps over which the sparsity coefficient rises linearly from 0."""
    grad_clip: float | None = None
    """Clip the gradient norm to this value (None: no clipping)."""
    normalise: bool = True
    """Scale activations to E||x|| = sqrt(d_in) while training; folded into the saved weights."""
    init_samples: int = 4096
    """Tokens from the first batches used for the normalisation and the b_dec init."""
    b_dec_init: str = "geometric_median"
    """Initial b_dec: "geometric_median", "mean" or "zeros"."""
    dead_tokens: int | None = None
    """A latent is dead after this many tokens without firing; default min(10M, tokens/10)."""
    resample_every: int | None = None
    """Resample dead latents every this many steps (L1 SAEs); default steps/6, 0 disables.
    Resampling stops after 60% of training so the schedule can settle."""
    log_every: int = 50
    """Write metrics every this many steps."""
    checkpoint_every: int = 500
    """Write a checkpoint every this many steps (0: only at the end) when out_dir is given."""
    seed: int = 0
    """Seed of the trainer's own randomness (resampling)."""
    device: str = "cpu"
    """Device to train on."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.b_dec_init not in ("geometric_median", "mean", "zeros"):
            raise ConfigError(
                f"b_dec_init must be geometric_median, mean or zeros, got {self.b_dec_init!r}"
            )
        for key in ("lr_warmup", "lr_decay_start", "sparsity_warmup"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{key} must be a fraction in [0, 1], got {getattr(self, key)}")

    def lr_for(self, sae: SAE) -> float:
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(sae.cfg.d_sae / 2**14)

    def lr_factor(self, step: int) -> float:
        """Warm-up then constant then linear decay to 0; step counts from 0."""
        warm = self.lr_warmup * self.steps
        if step < warm:
            return (step + 1) / warm
        decay_from = self.lr_decay_start * self.steps
        if step >= decay_from:
            return max(0.0, (self.steps - step) / max(1.0, self.steps - decay_from))
        return 1.0

    def sparsity_factor(self, step: int) -> float:
        warm = self.sparsity_warmup * self.steps
        return min(1.0, (step + 1) / warm) if warm > 0 else 1.0


@dataclass
class _Slot:
    """One SAE being trained and its training state."""

    sae: SAE
    opt: torch.optim.Adam
    scale_in: float = 1.0
    scale_out: float = 1.0
    since_fired: Tensor | None = None  # (d_sae,) tokens since each latent last fired
    last_log: dict[str, Any] | None = None


def _as_batch(item: Any) -> tuple[Tensor, Tensor]:
    if isinstance(item, Tensor):
        return item, item
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    raise InputError("batches must be tensors x or pairs (x, y) of tensors")


def _stream(batches: Iterable[Any], start: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches from position `start`: a direct jump where the stream supports it."""
    if hasattr(batches, "iter_from"):
        it: Iterator[Any] = batches.iter_from(start)  # type: ignore[attr-defined]
    else:
        it = itertools.islice(iter(batches), start, None)
    return (_as_batch(b) for b in it)


def _check_batch(x: Tensor, y: Tensor, slots: Sequence[_Slot], step: int) -> None:
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
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise BadBatchError(
            f"batch at step {step} contains NaN or Inf; weights and checkpoint are untouched. "
            "Clean the data (or drop that batch) and resume"
        )


# ----- initialisation from data --------------------------------------------------------------


def _take_init(stream: Iterator[tuple[Tensor, Tensor]], n: int) -> list[tuple[Tensor, Tensor]]:
    """The first batches covering >= n tokens (they are trained on afterwards, too)."""
    taken: list[tuple[Tensor, Tensor]] = []
    tokens = 0
    while tokens < n:
        try:
            b = next(stream)
        except StopIteration:
            break
        taken.append(b)
        tokens += b[0].shape[0]
    if not taken:
        raise InputError("the batch stream is empty; give it at least one batch")
    return taken


@torch.no_grad()
def _init_from_data(slot: _Slot, x: Tensor, y: Tensor, cfg: TrainConfig) -> None:
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


# ----- one step -----------------------------------------------------------------------------


def _dead_mask(slot: _Slot, dead_tokens: int) -> Tensor:
    return slot.since_fired >= dead_tokens  # type: ignore[operator]


def _step(
    slot: _Slot, x: Tensor, y: Tensor, step: int, cfg: TrainConfig, dead_tokens: int
) -> LossOutput:
    sae, opt = slot.sae, slot.opt
    x_n = x * slot.scale_in
    y_n = x_n if y is x and slot.scale_out == slot.scale_in else y * slot.scale_out
    ctx = LossContext(cfg.sparsity_factor(step), _dead_mask(slot, dead_tokens))
    out = sae.loss(x_n, y_n, ctx)
    total = out.total
    if not torch.isfinite(total):
        raise BadBatchError(
            f"loss at step {step} is not finite ({float(total)}); weights and checkpoint are "
            "untouched. Lower the learning rate or check the data, then resume"
        )
    opt.zero_grad(set_to_none=True)
    total.backward()
    if sae.cfg.unit_norm_decoder and sae.W_dec.grad is not None:
        ops.remove_parallel_grad_(sae.W_dec.detach(), sae.W_dec.grad)
    params = [p for p in sae.parameters() if p.grad is not None]
    if cfg.grad_clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))  # type: ignore[union-attr]
    if not torch.isfinite(norm):
        raise BadBatchError(
            f"gradient at step {step} is not finite; weights and checkpoint are untouched. "
            "Lower the learning rate or check the data, then resume"
        )
    lr = cfg.lr_for(sae) * cfg.lr_factor(step)
    for group in opt.param_groups:
        group["lr"] = lr
    adam_step(opt)
    if sae.cfg.unit_norm_decoder:
        sae.normalise_decoder()
    sae.after_step(out)
    fired = out.fired()
    slot.since_fired = torch.where(fired, 0, slot.since_fired + x.shape[0])  # type: ignore[operator]
    return out


@torch.no_grad()
def _resample(
    slot: _Slot, x: Tensor, y: Tensor, out: LossOutput, dead: Tensor, gen: torch.Generator
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


# ----- logging ------------------------------------------------------------------------------


@torch.no_grad()
def _log_row(
    slot: _Slot, y: Tensor, out: LossOutput, step: int, tokens: int, dead_tokens: int
) -> dict[str, Any]:
    y_n = y * slot.scale_out
    row: dict[str, Any] = {"step": step, "tokens": tokens}
    row.update({f"loss_{k}": float(v) for k, v in out.terms.items()})
    row["loss"] = float(out.total)
    row["l0"] = out.l0()
    row["mse"] = metrics.mse(y_n, out.y_hat)
    row["explained_variance"] = metrics.explained_variance(y_n, out.y_hat)
    row["dead_fraction"] = float(_dead_mask(slot, dead_tokens).float().mean())
    return row


# ----- checkpoints --------------------------------------------------------------------------


def _checkpoint_tensors(slots: Sequence[_Slot], gen: torch.Generator) -> dict[str, Tensor]:
    t: dict[str, Tensor] = {"trainer_rng": gen.get_state()}
    for i, s in enumerate(slots):
        for name, v in s.sae.state_dict().items():
            t[f"sae{i}.{name}"] = v.detach().cpu().clone()
        t[f"sae{i}.since_fired"] = s.since_fired.cpu().clone()  # type: ignore[union-attr]
        for name, p in s.sae.named_parameters():
            for key, v in s.opt.state.get(p, {}).items():
                t[f"opt{i}.{name}.{key}"] = v.detach().cpu().clone()
    return t


def _write_checkpoint(
    out_dir: Path, slots: Sequence[_Slot], gen: torch.Generator, meta: dict
) -> None:
    atomic_save_tensors(
        out_dir / CHECKPOINT_FILE,
        _checkpoint_tensors(slots, gen),
        {"saescope_checkpoint": json.dumps(meta)},
    )


def _read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            meta = json.loads((fh.metadata() or {})["saescope_checkpoint"])
        tensors = load_file(path)
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise FormatError(
            f"{path} is not a readable saescope checkpoint ({e}); start afresh"
        ) from None
    if meta.get("version", 0) > CHECKPOINT_VERSION:
        raise FormatError(f"{path} was written by a newer saescope; upgrade saescope")
    return tensors, meta


def _restore(
    slots: Sequence[_Slot],
    tensors: dict[str, Tensor],
    meta: dict,
    gen: torch.Generator,
    device: str,
) -> None:
    if len(meta["saes"]) != len(slots):
        raise ConfigError(
            f"checkpoint holds {len(meta['saes'])} SAEs, this run trains {len(slots)}"
        )
    for i, (s, m) in enumerate(zip(slots, meta["saes"], strict=True)):
        if m["cfg"] != _jsonable(s.sae.cfg.to_dict()):
            raise ConfigError(
                f"checkpoint SAE {i} has config {m['cfg']}, this run {s.sae.cfg.to_dict()}; "
                "resume with the same SAE settings or start a new run"
            )
        prefix = f"sae{i}."
        s.sae.load_state_dict(
            {
                k[len(prefix) :]: v
                for k, v in tensors.items()
                if k.startswith(prefix) and k != f"{prefix}since_fired"
            }
        )
        s.since_fired = tensors[f"{prefix}since_fired"].to(device)
        s.scale_in, s.scale_out = m["scale_in"], m["scale_out"]
        for name, p in s.sae.named_parameters():
            state = {
                key: _like(p, tensors[f"opt{i}.{name}.{key}"], key)
                for key in ("step", "exp_avg", "exp_avg_sq")
                if f"opt{i}.{name}.{key}" in tensors
            }
            if state:
                s.opt.state[p] = state
    gen.set_state(tensors["trainer_rng"])


def _like(p: Tensor, v: Tensor, key: str) -> Tensor:
    """An Adam moment in its parameter's memory layout (files hold contiguous tensors; the
    fused kernel wants the parameter's strides). The step counter stays as it is."""
    if key == "step":
        return v.to(p.device)
    return torch.empty_like(p).copy_(v)


def _truncate_log(path: Path, step: int) -> None:
    """Drop metric rows written after the checkpoint a run resumes from."""
    if path.is_file():
        rows = [r for r in path.read_text().splitlines() if r and json.loads(r)["step"] <= step]
        path.write_text("".join(r + "\n" for r in rows))


def _jsonable(d: dict[str, Any]) -> Any:
    return json.loads(json.dumps(d))


# ----- the loop -----------------------------------------------------------------------------


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
    return out.eval()


def sae_dirs(out_dir: Path, n: int) -> list[Path]:
    """Where each SAE of a run is saved: the run folder itself for one SAE, else sae_{i}/."""
    return [out_dir] if n == 1 else [out_dir / f"sae_{i}" for i in range(n)]


@dataclass
class _Position:
    """Where a run is: steps done, tokens seen, and the dead-latent window in tokens."""

    step: int
    tokens: int
    dead_tokens: int


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


@torch.no_grad()
def adam_step(opt: torch.optim.Adam) -> None:
    """opt.step() for a fused Adam, with each transposed tensor handed to the fused kernel as
    its contiguous transpose. Adam is elementwise, so the result is the same, but the kernel
    would otherwise copy such a tensor (W_enc, its gradient and its moments) to contiguous
    memory and back, ~6 ms a step at d_in 512 x d_sae 8192. Falls back to opt.step() for the
    first step (which creates the state) and any setting the shortcut does not cover."""
    lists: list[list[list[Tensor]]] = []
    for group in opt.param_groups:
        if not group.get("fused") or group["amsgrad"] or group.get("capturable"):
            return opt.step()  # type: ignore[func-returns-value]
        if group.get("differentiable") or group.get("decoupled_weight_decay"):
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


def _make_slots(saes: Sequence[SAE], cfg: TrainConfig) -> list[_Slot]:
    slots = []
    for sae in saes:
        sae.to(cfg.device).train()
        # fused: one pass over each parameter's memory per step (the foreach default makes
        # about a dozen); equal to the default to float rounding, 4x faster for big SAEs.
        opt = torch.optim.Adam(
            sae.parameters(), lr=cfg.lr_for(sae), betas=(cfg.beta1, cfg.beta2), fused=True
        )
        fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=cfg.device)
        slots.append(_Slot(sae, opt, since_fired=fired))
    return slots


def _start_fresh(
    slots: list[_Slot],
    batches: Iterable[Any],
    cfg: TrainConfig,
    out_path: Path | None,
    overwrite: bool,
) -> tuple[_Position, Iterator[tuple[Tensor, Tensor]]]:
    """Normalisation scales and b_dec from the first batches (which are then trained on)."""
    if out_path and (out_path / CHECKPOINT_FILE).is_file() and not overwrite:
        raise ConfigError(
            f"{out_path} already holds a run; resume it (--resume), choose another folder, "
            "or pass --overwrite"
        )
    stream = _stream(batches, 0)
    first = _take_init(stream, cfg.init_samples)
    x0 = torch.cat([b[0] for b in first]).to(cfg.device)
    y0 = torch.cat([b[1] for b in first]).to(cfg.device)
    for s in slots:
        _check_batch(x0, y0, [s], 0)
        _init_from_data(s, x0, y0, cfg)
    batch_size = first[0][0].shape[0]
    dead_tokens = cfg.dead_tokens or min(10_000_000, max(1, cfg.steps * batch_size // 10))
    if out_path:
        out_path.mkdir(parents=True, exist_ok=True)
        (out_path / METRICS_FILE).unlink(missing_ok=True)
    return _Position(0, 0, dead_tokens), itertools.chain(first, stream)


def _start_resumed(
    slots: list[_Slot],
    batches: Iterable[Any],
    cfg: TrainConfig,
    out_path: Path | None,
    gen: torch.Generator,
    metadata: dict[str, Any] | None = None,
) -> tuple[_Position, Iterator[tuple[Tensor, Tensor]]]:
    ckpt = out_path / CHECKPOINT_FILE if out_path else None
    if ckpt is None or not ckpt.is_file():
        raise FormatError(f"nothing to resume: no {CHECKPOINT_FILE} in {out_path}; drop --resume")
    tensors, meta = _read_checkpoint(ckpt)
    if meta["train"] != _jsonable(dataclasses.asdict(cfg)):
        raise ConfigError(
            "checkpoint was made with other training settings; resume with the same ones "
            f"(checkpoint: {meta['train']})"
        )
    if "run" in meta and meta["run"] != _jsonable(metadata or {}):
        raise ConfigError(
            "checkpoint was made on other data or settings; resume with the same ones "
            f"(checkpoint: {meta['run']})"
        )
    _restore(slots, tensors, meta, gen, cfg.device)
    _truncate_log(ckpt.parent / METRICS_FILE, meta["step"])
    pos = _Position(meta["step"], meta["tokens"], meta["dead_tokens"])
    return pos, _stream(batches, pos.step)


def _checkpoint_meta(
    cfg: TrainConfig, slots: Sequence[_Slot], pos: _Position, metadata: dict[str, Any] | None
) -> dict[str, Any]:
    saes = [
        {"cfg": _jsonable(s.sae.cfg.to_dict()), "scale_in": s.scale_in, "scale_out": s.scale_out}
        for s in slots
    ]
    return {
        "version": CHECKPOINT_VERSION,
        **dataclasses.asdict(pos),
        "train": _jsonable(dataclasses.asdict(cfg)),
        "saes": saes,
        "run": _jsonable(metadata or {}),  # what the caller says the run is (its data)
    }


def _log(
    slots: Sequence[_Slot],
    outs: Sequence[LossOutput],
    y: Tensor,
    pos: _Position,
    log_file: Any,
    bar: tqdm,
) -> None:
    for i, (s, out) in enumerate(zip(slots, outs, strict=True)):
        s.last_log = {"sae": i, **_log_row(s, y, out, pos.step, pos.tokens, pos.dead_tokens)}
        if log_file:
            log_file.write(json.dumps(s.last_log) + "\n")
    if log_file:
        log_file.flush()
    head = slots[0].last_log or {}
    bar.set_postfix(
        loss=f"{head.get('loss', 0):.4g}",
        l0=f"{head.get('l0', 0):.3g}",
        ev=f"{head.get('explained_variance', 0):.3f}",
    )


def _save_final(
    slots: Sequence[_Slot], cfg: TrainConfig, out_path: Path | None, metadata: dict[str, Any] | None
) -> list[SAE]:
    final = [folded_copy(s.sae, s.scale_in, s.scale_out) for s in slots]
    if out_path:
        for s, sae, path in zip(slots, final, sae_dirs(out_path, len(slots)), strict=True):
            meta = {
                "training": _jsonable(dataclasses.asdict(cfg)),
                "normalisation": {"scale_in": s.scale_in, "scale_out": s.scale_out, "folded": True},
                "final_metrics": s.last_log,
                **(metadata or {}),
            }
            save(sae, path, meta)
    return final


def train(
    saes: SAE | Sequence[SAE],
    batches: Iterable[Any],
    cfg: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train one SAE, or several on the same batch stream in one pass (a sweep over k or l1).

    batches: an iterable of (x, y) pairs (or tensors x, meaning y = x), x (N, d_in).
    out_dir: where metrics.jsonl, checkpoints and the final SAE folder(s) go.
    resume: continue from out_dir's checkpoint; the result is bitwise what an uninterrupted
    run gives (on CPU) when the stream is deterministic.
    overwrite: start afresh in an out_dir that already holds a run (otherwise an error).
    """
    cfg = cfg or TrainConfig()
    slots = _make_slots([saes] if isinstance(saes, SAE) else list(saes), cfg)
    if not slots:
        raise ConfigError("train needs at least one SAE")
    out_path = Path(out_dir) if out_dir is not None else None
    gen = torch.Generator().manual_seed(cfg.seed)
    if resume:
        pos, stream = _start_resumed(slots, batches, cfg, out_path, gen, metadata)
    else:
        pos, stream = _start_fresh(slots, batches, cfg, out_path, overwrite)
    every = cfg.resample_every if cfg.resample_every is not None else max(1, cfg.steps // 6)

    bar = tqdm(
        total=cfg.steps, initial=pos.step, disable=not cfg.progress, desc="train", unit="step"
    )
    log_file = open(out_path / METRICS_FILE, "a") if out_path else None
    try:
        for step in range(pos.step, cfg.steps):
            batch = next(stream, None)
            if batch is None:
                raise InputError(
                    f"the batch stream ended after {step} batches but steps={cfg.steps}; "
                    "give more data or fewer steps"
                )
            x, y = batch[0].to(cfg.device), batch[1].to(cfg.device)
            _check_batch(x, y, slots, step)
            outs = [_step(s, x, y, step, cfg, pos.dead_tokens) for s in slots]
            pos.step, pos.tokens = step + 1, pos.tokens + x.shape[0]
            if every and pos.step % every == 0 and pos.step < 0.6 * cfg.steps:
                for s, out in zip(slots, outs, strict=True):
                    if s.sae.cfg.dead_latent_strategy == "resample":
                        _resample(s, x, y, out, _dead_mask(s, pos.dead_tokens), gen)
            if pos.step % cfg.log_every == 0 or pos.step == cfg.steps:
                _log(slots, outs, y, pos, log_file, bar)
            bar.update(1)
            due = cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0
            if out_path and (due or pos.step == cfg.steps):
                _write_checkpoint(out_path, slots, gen, _checkpoint_meta(cfg, slots, pos, metadata))
    finally:
        bar.close()
        sparse.release_buffers()
        if log_file:
            log_file.close()
    final = _save_final(slots, cfg, out_path, metadata)
    return TrainResult(final, [s.last_log or {} for s in slots], out_path)

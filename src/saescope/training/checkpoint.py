"""Checkpoints and resume: everything a run needs to continue bitwise where it stopped (raw
weights, Adam moments, dead-latent counters, the trainer's RNG, the position in the stream),
in one safetensors file written atomically, plus the checks that refuse to resume a run with
other settings or on other data, naming the setting and both values."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor

from saescope.atomic import atomic_save_tensors, atomic_write_bytes
from saescope.data.outliers import OutlierRule
from saescope.errors import ConfigError, FormatError
from saescope.saes import SAE
from saescope.training.config import NEUTRAL_FIELDS, TrainConfig
from saescope.training.optim import Slot

CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_VERSION = 2
"""2: the train section records the learning rate used (`settle_lr`), not null for the
default; older versions are read (a null rate there meaning `OLD_LR_AT_16K`'s default)."""
OLD_LR_AT_16K = 2e-4
"""The default rate at d_sae = 2^14 before version 2: a run recorded then with no lr trained
at OLD_LR_AT_16K / sqrt(d_sae / 2^14), and resumes at it."""


@dataclass
class Position:
    """Where a run is: steps done, tokens seen, the dead-latent window in tokens, the outlier
    rule fitted at the start (None: every token trained on) and the tokens it set aside, the
    wall time spent training so far, and resampling's window (tokens) and period (steps;
    0: never), fixed at the start so that a run resumes with the ones it began with."""

    step: int
    tokens: int
    dead_tokens: int
    outlier_rule: OutlierRule | None = None
    set_aside: int = 0
    elapsed: float = 0.0
    resample_tokens: int = 0
    resample_every: int = 0

    @classmethod
    def start(cls, cfg: TrainConfig, batch_tokens: int, rule: OutlierRule | None) -> Position:
        """A fresh run's position: the windows and period from cfg and the first batch."""
        dead, window = cfg.dead_window(batch_tokens), cfg.resample_window(batch_tokens)
        return cls(0, 0, dead, rule, resample_tokens=window, resample_every=cfg.resample_period())

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Position:
        """The position a checkpoint's JSON records (older checkpoints: no rule, no time, and
        resampling at the dead window every `resample_every` or steps/6 steps, as then)."""
        rule = OutlierRule.from_dict(meta.get("outlier_rule"))
        train = meta.get("train", {})
        every = train.get("resample_every")
        return cls(
            meta["step"],
            meta["tokens"],
            meta["dead_tokens"],
            rule,
            int(meta.get("set_aside", 0)),
            float(meta.get("elapsed", 0.0)),
            int(meta.get("resample_tokens", meta["dead_tokens"])),
            int(meta.get("resample_every", every if every is not None else _old_period(train))),
        )


def _old_period(train: dict[str, Any]) -> int:
    """The default period before issue 18's fix, for checkpoints that do not record theirs."""
    return max(1, int(train.get("steps", TrainConfig.steps)) // 6)


def jsonable(d: Any) -> Any:
    """d as it reads back from JSON (tuples become lists, and so on)."""
    return json.loads(json.dumps(d))


def _tensors(slots: Sequence[Slot], gen: torch.Generator) -> dict[str, Tensor]:
    t: dict[str, Tensor] = {"trainer_rng": gen.get_state()}
    for i, s in enumerate(slots):
        for name, v in s.sae.state_dict().items():
            t[f"sae{i}.{name}"] = v.detach().cpu().clone()
        t[f"sae{i}.since_fired"] = s.since_fired.cpu().clone()  # type: ignore[union-attr]
        for name, p in s.sae.named_parameters():
            for key, v in s.opt.state.get(p, {}).items():
                t[f"opt{i}.{name}.{key}"] = v.detach().cpu().clone()
    return t


def meta(
    cfg: TrainConfig,
    slots: Sequence[Slot],
    pos: Position,
    metadata: dict[str, Any] | None,
    world_size: int = 1,
) -> dict[str, Any]:
    """The checkpoint's JSON: position, training config, each SAE's config and scales, what
    the caller says the run is (its data) and how many processes trained it."""
    saes = [
        {
            "cfg": jsonable(s.sae.cfg.to_dict()),
            "scale_in": s.scale_in,
            "scale_out": s.scale_out,
            "last_log": s.last_log,  # so a finished run resumed saves its final metrics again
            # the auto sparse/dense choice of the next step reads it (ReLU, JumpReLU)
            "live_density": getattr(s.sae, "live_density", None),
            **({"controller": s.controller.state()} if s.controller else {}),
        }
        for s in slots
    ]
    return {
        "version": CHECKPOINT_VERSION,
        **dataclasses.asdict(pos),
        "train": jsonable(dataclasses.asdict(cfg)),
        "saes": saes,
        "run": jsonable(metadata or {}),
        "world_size": world_size,
    }


def write(out_dir: Path, slots: Sequence[Slot], gen: torch.Generator, meta: dict) -> None:
    """Write the checkpoint: temp file, fsync, rename (a kill leaves the previous one)."""
    atomic_save_tensors(
        out_dir / CHECKPOINT_FILE, _tensors(slots, gen), {"saescope_checkpoint": json.dumps(meta)}
    )


def read(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The checkpoint's tensors and its JSON."""
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


def read_meta(out_dir: str | Path) -> dict[str, Any] | None:
    """The JSON of a run folder's checkpoint (None when it has none)."""
    path = Path(out_dir) / CHECKPOINT_FILE
    return read(path)[1] if path.is_file() else None


def recorded_lr(meta: dict[str, Any], saes: Sequence[SAE]) -> float | None:
    """The learning rate a checkpoint's run trains at: as its train section records it; for
    a checkpoint before version 2 given no lr, that version's default for the SAEs' width
    (None: several widths, each SAE at the default for its own, as recorded)."""
    lr = meta["train"].get("lr")
    if lr is not None or meta.get("version", 0) >= 2:
        return lr
    widths = sorted({s.cfg.d_sae for s in saes})
    if len(widths) > 1:
        raise ConfigError(
            f"cannot resume exactly: this version {meta.get('version', 0)} checkpoint records "
            f"no learning rate, and its SAEs (d_sae {_show(widths)}) each trained at "
            f"{OLD_LR_AT_16K:g} / sqrt(d_sae / 2^14); start a new run"
        )
    return OLD_LR_AT_16K / math.sqrt(widths[0] / 2**14)


def settle_lr(
    cfg: TrainConfig, saes: Sequence[SAE], out_dir: str | Path | None, resume: bool
) -> TrainConfig:
    """cfg with lr the rate the run trains at, so that its checkpoint records it (a later
    default changes no resumed run): given, as it is; resumed, the checkpoint's
    (`recorded_lr`); fresh, the default for the SAEs' width (None where SAEs of several
    widths each take their own)."""
    if cfg.lr is not None:
        return cfg
    meta = read_meta(out_dir) if resume and out_dir is not None else None
    if meta is not None:
        return dataclasses.replace(cfg, lr=recorded_lr(meta, saes))
    rates = {cfg.lr_for(s) for s in saes}
    return dataclasses.replace(cfg, lr=rates.pop()) if len(rates) == 1 else cfg


def mismatch(name: str, recorded: Any, given: Any) -> ConfigError:
    """The one-line error for a setting that differs from the run's: its name, both values."""
    return ConfigError(
        f"cannot resume: {name} is {_show(recorded)} in the run, {_show(given)} here; resume "
        "with the run's value or start a new run"
    )


def _show(v: Any) -> str:
    if v is None:
        return "none"
    return ", ".join(map(str, v)) if isinstance(v, list | tuple) else str(v)


def first_difference(recorded: dict, given: dict, prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first key (dotted, into nested dicts) whose values differ, with both values."""
    for key in sorted(set(recorded) | set(given)):
        a, b = recorded.get(key), given.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}", a, b
    return None


def check_same_run(meta: dict, cfg: TrainConfig, metadata: dict[str, Any] | None) -> None:
    """Refuse to resume with other training settings (those in `NEUTRAL_FIELDS` may differ)
    or on other data, naming the first setting that differs. What the checkpoint does not
    record (fields added since it was written) is not compared."""
    now = jsonable(dataclasses.asdict(cfg))
    defaults = jsonable(dataclasses.asdict(TrainConfig()))
    old = {**{k: defaults[k] for k in now}, "precision": "fp32", **meta["train"]}
    found = first_difference(
        {k: v for k, v in old.items() if k not in NEUTRAL_FIELDS},
        {k: v for k, v in now.items() if k not in NEUTRAL_FIELDS},
    )
    if found is None and "run" in meta:
        given = jsonable(metadata or {})
        found = first_difference(meta["run"], {k: given.get(k) for k in meta["run"]})
    if found:
        raise mismatch(*found)


def check_world_size(recorded: int, given: int, out_path: Path | None) -> None:
    """Refuse, in one line, to resume a run on another number of processes."""
    if recorded != given:
        launch = "plain saescope" if recorded == 1 else f"torchrun --nproc-per-node {recorded}"
        raise ConfigError(
            f"cannot resume {out_path}: it was trained on {recorded} process(es) and this is "
            f"{given}; the world size changed. Resume it with {launch} (or start a new run)"
        )


def restore(
    slots: Sequence[Slot], tensors: dict[str, Tensor], meta: dict, gen: torch.Generator
) -> None:
    """Put the checkpoint's weights, moments, counters, scales and RNG into the slots."""
    if len(meta["saes"]) != len(slots):
        raise ConfigError(
            f"checkpoint holds {len(meta['saes'])} SAEs, this run trains {len(slots)}"
        )
    for i, (s, m) in enumerate(zip(slots, meta["saes"], strict=True)):
        found = first_difference(m["cfg"], jsonable(s.sae.cfg.to_dict()))
        if found:
            name, a, b = found
            raise mismatch(name if len(slots) == 1 else f"SAE {i}'s {name}", a, b)
        prefix = f"sae{i}."
        s.sae.load_state_dict(
            {
                k[len(prefix) :]: v
                for k, v in tensors.items()
                if k.startswith(prefix) and k != f"{prefix}since_fired"
            }
        )
        s.since_fired = tensors[f"{prefix}since_fired"].to(s.sae.W_dec.device)
        s.scale_in, s.scale_out = m["scale_in"], m["scale_out"]
        s.last_log = m.get("last_log")
        if m.get("live_density") is not None:
            s.sae.live_density = m["live_density"]
        if s.controller is not None and "controller" in m:
            s.controller.load(m["controller"])
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


def truncate_log(path: Path, step: int) -> None:
    """Drop metric rows written after the checkpoint a run resumes from (atomically)."""
    if path.is_file():
        rows = [r for r in path.read_text().splitlines() if r and json.loads(r)["step"] <= step]
        atomic_write_bytes(path, "".join(r + "\n" for r in rows).encode())


def resume(
    slots: Sequence[Slot],
    cfg: TrainConfig,
    out_path: Path | None,
    gen: torch.Generator,
    metadata: dict[str, Any] | None = None,
    world_size: int = 1,
    writes: bool = True,
) -> Position:
    """Restore the slots from out_path's checkpoint and say where the run stands. A run
    resumes on as many processes as it was trained on (the gradient sums, and so the last
    bits of the weights, depend on it); `writes`: this process may write (rank 0)."""
    ckpt = out_path / CHECKPOINT_FILE if out_path else None
    if ckpt is None or not ckpt.is_file():
        raise FormatError(f"nothing to resume: no {CHECKPOINT_FILE} in {out_path}; drop --resume")
    tensors, meta = read(ckpt)
    meta["train"]["lr"] = recorded_lr(meta, [s.sae for s in slots])  # an older one's too
    check_same_run(meta, cfg, metadata)
    check_world_size(meta.get("world_size", 1), world_size, out_path)
    restore(slots, tensors, meta, gen)
    if writes:
        truncate_log(ckpt.parent / METRICS_FILE, meta["step"])
    return Position.from_meta(meta)

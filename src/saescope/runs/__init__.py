"""Runs: what an SAE was trained on (`DataSpec`) and the one way to open a run folder (`Run`).

A `DataSpec` names a data source completely: the seed article's synthetic task, an activation
file, an activation cache, or a model harvested on the fly (with its hook points, text,
context length and the text's token fingerprint). It is saved with every run (cfg.json's
`metadata.data`, and the checkpoint, where resume compares it), and it opens the source again:
`open(batch_size, seed)` gives the training stream, `held_out(tokens)` the data set aside for
evaluation (held-out contexts of the text, or held-out draws of a synthetic task).

`Run.open(path)` gives a trained run's SAEs, its DataSpec and training config, and loads its
model only when asked; a peer library's SAE folder (SAELens, ...) opens the same way, its
model, hook point and context taken from its metadata or given (`Run.open(path, model=,
hook=)`, `runs.peer`). `train` (CLI and library), `eval` and every later command go through
here, so a run is described and opened in one place; `find_runs(folder)` lists the runs under
a folder (architecture, data, steps, final metrics) without loading any weights, and
`sae_folders(folder)` the saved SAEs of one folder (the names `Run.open` gives them);
`resume_run(path)` continues a run with the settings its checkpoint recorded (`Recorded`),
checking those a caller gives (`Given`). `train_hooks` trains one SAE per hook point in one
pass over a model or a cache (`runs.layers`; spread over ranks with `--parallel layers`), each
into a subfolder that `Run.open(path, hook=)` opens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saescope.activations import harvest_to_cache
from saescope.data import ActivationCache
from saescope.data.shards import cache_dtype
from saescope.data.stream import IndexedBatches
from saescope.errors import ConfigError
from saescope.parallel import DDPGroup, Shard
from saescope.runs.data import KINDS, DataSpec, HeldOut
from saescope.runs.layers import (
    build_owned,
    final_metrics,
    hook_run,
    hook_specs,
    hooks_of,
    is_layered,
    parse_hooks,
    resume_hooks,
    train_hooks,
)
from saescope.runs.listing import find_runs
from saescope.runs.peer import peer_folder, peer_format, peer_spec
from saescope.runs.resume import Given, Recorded
from saescope.runs.run import Run, sae_folders
from saescope.saes import SAE, architecture, make_sae
from saescope.saes.target import k_for_target
from saescope.training import TrainConfig, TrainResult, checkpoint, sae_dirs, train
from saescope.training.checkpoint import mismatch
from saescope.training.config import check_device
from saescope.training.latents_loop import train_latents


def run_metadata(data: DataSpec, batch_size: int | None = None) -> dict[str, Any]:
    """What a run says it is, saved in cfg.json and the checkpoint (resume compares it and
    continues with it): its data and the stream's batch size."""
    meta: dict[str, Any] = {"data": data.to_dict()}
    if batch_size is not None:
        meta["batch_size"] = batch_size
    return meta


SHAPED_BY_DATA = {"d_sae": "8 x d_in", "k": "min(32, d_in // 2)"}
"""The defaults `build_sae` takes from the data instead of the config's own."""


def build_sae(arch: str, stream: IndexedBatches, **fields: Any) -> SAE:
    """An SAE of architecture `arch` shaped for the stream: d_in and d_out from it, a
    transcoder (no pre-centring) when y is not x; d_sae 8 x d_in and, where the architecture
    has one, k = min(32, d_in // 2) unless given, or set by `target_l0` (which the other
    architectures reach by steering their sparsity coefficient in training). Seed torch
    first for a reproducible init."""
    cfg = {"architecture": arch, "d_in": stream.d_in, "d_out": stream.d_out, **fields}
    cfg["apply_b_dec_to_input"] = stream.y_is_x
    cfg.setdefault("d_sae", 8 * stream.d_in)
    config_cls = architecture(arch).config_cls
    if "k" in {f.name for f in dataclasses.fields(config_cls)}:
        if cfg.get("target_l0") is not None and "k" in cfg:
            raise ConfigError(f"give --k or --target-l0 for {arch}, not both (the target sets k)")
        if cfg.get("target_l0") is not None:
            cfg["k"] = k_for_target(config_cls, cfg["target_l0"])
        cfg.setdefault("k", max(1, min(32, stream.d_in // 2)))
    return make_sae(cfg)


def check_tokens(tokens: int | None) -> None:
    """A token count must be positive (None: not given)."""
    if tokens is not None and tokens < 1:
        raise ConfigError(f"--tokens must be at least 1, got {tokens}")


def steps_for_tokens(tokens: int, stream: IndexedBatches) -> int:
    """Optimiser steps that cover `tokens` tokens of the stream (at least one)."""
    check_tokens(tokens)
    return max(1, -(-tokens // stream.tokens_per_batch))


def passes(stream: IndexedBatches, steps: int) -> float | None:
    """How many times `steps` batches go through the stream's finite source (a file, a
    cache, a model's text); None for an endless one (a synthetic task)."""
    return steps / stream.per_epoch if stream.per_epoch else None


def passes_note(data: DataSpec, stream: IndexedBatches, steps: int) -> str | None:
    """A line saying that a run goes through its data more than once (None if it does not)."""
    times = passes(stream, steps)
    if times is None or times <= 1:
        return None
    return (
        f"note: {steps} steps go through {data.describe()} {times:.1f} times; more data "
        "would train on fresh tokens"
    )


def train_run(
    saes: SAE | Sequence[SAE],
    data: DataSpec,
    stream: IndexedBatches,
    cfg: TrainConfig,
    out_dir: str | Path | None,
    resume: bool = False,
    overwrite: bool = False,
    log: Sequence[str] = (),
    group: DDPGroup | None = None,
) -> TrainResult:
    """`training.train` on a stream opened from `data`, which the run records (so that
    `Run.open` finds it and resume refuses other data); `log`: loggers beside metrics.jsonl
    ("tensorboard"); `group`: the processes training together (data parallel,
    `parallel.launched`), each reading its share of every batch of `stream`."""
    metadata = run_metadata(data, getattr(stream, "batch_size", None))
    if resume and out_dir is not None:
        metadata = _as_recorded(metadata, Path(out_dir))
    batches: IndexedBatches = stream
    if group is not None and group.mode == "latents":  # every rank reads the whole batches
        return _train_latents(saes, stream, cfg, out_dir, resume, metadata, overwrite, log, group)
    if group is not None and group.size > 1:
        batches = Shard(stream, group.rank, group.size)
    return train(saes, batches, cfg, out_dir, resume, metadata, overwrite, log, group)


def _train_latents(
    saes: SAE | Sequence[SAE],
    stream: IndexedBatches,
    cfg: TrainConfig,
    out_dir: str | Path | None,
    resume: bool,
    metadata: dict[str, Any],
    overwrite: bool,
    log: Sequence[str],
    group: DDPGroup,
) -> TrainResult:
    """One SAE's latents sharded over the group (`training.latents_loop`)."""
    if not isinstance(saes, SAE):
        if len(saes) != 1:
            raise ConfigError("--parallel latents trains one SAE at a time; give one")
        saes = saes[0]
    return train_latents(saes, stream, group, cfg, out_dir, resume, metadata, overwrite, log)


def _as_recorded(metadata: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The checkpoint's own record of the run's data when it names the same data in another
    spelling (a relative path, as runs made before DataSpec recorded), so resume accepts it;
    else `metadata` as it is (and resume compares it)."""
    old = (checkpoint.read_meta(out_dir) or {}).get("run") or {}
    try:
        same = DataSpec.from_dict(old["data"]) == DataSpec.from_dict(metadata["data"])
    except (KeyError, TypeError, ConfigError):
        return metadata
    return {**metadata, "data": old["data"]} if same else metadata


def resume_run(
    out_dir: str | Path,
    given: Given | None = None,
    log: Sequence[str] = (),
    group: DDPGroup | None = None,
) -> TrainResult:
    """Continue the run in out_dir with the settings its checkpoint recorded: its SAEs, data,
    batch size and training config. A setting in `given` must be the run's (else a
    ConfigError names it and both values), except the training fields in
    `training.NEUTRAL_FIELDS` (progress, log and checkpoint intervals, device), which apply."""
    given = given or Given()
    recorded = Recorded.read(out_dir)
    recorded.check(given)
    data, stream, cfg = recorded.open(given)
    steps = cfg.steps if given.tokens is None else steps_for_tokens(given.tokens, stream)
    if steps != cfg.steps:
        run_tokens = f"{cfg.steps * stream.tokens_per_batch} ({cfg.steps} steps)"
        raise mismatch("tokens", run_tokens, f"{given.tokens} ({steps} steps)")
    saes = [make_sae(c) for c in recorded.saes]
    one = saes[0] if len(saes) == 1 else saes
    return train_run(one, data, stream, cfg, out_dir, True, log=log, group=group)


def check_harvest(
    out: str | Path,
    tokens: int | None,
    batch_size: int,
    shard_contexts: int,
    dtype: str | None = None,
    device: str = "cpu",
) -> None:
    """The checks a harvest can make before loading anything."""
    check_tokens(tokens)
    if dtype is not None:
        cache_dtype(dtype)
    check_device(device)
    if batch_size < 1 or shard_contexts < 1:
        raise ConfigError("--batch-size and --shard-contexts must be at least 1")
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"{out} is a file; give a folder for the cache")


def harvest(
    data: DataSpec,
    hooks: Sequence[str],
    out: str | Path,
    tokens: int | None = None,
    batch_size: int = 32,
    shard_contexts: int = 256,
    progress: bool = True,
    dtype: str | None = None,
    device: str = "cpu",
) -> ActivationCache:
    """Harvest the training contexts of a model spec's text at `hooks` into the cache at
    `out` (resumed, or grown when asked for more): all of them, or enough for `tokens`.
    dtype: what the cache stores, float32 (None: float32, or an existing cache's own),
    bfloat16 or float16 (`data.shards.CACHE_DTYPES`); device: where the model runs."""
    if data.kind != "model":
        raise ConfigError("harvest takes a model's data (DataSpec.for_model)")
    check_harvest(out, tokens, batch_size, shard_contexts, dtype, device)
    model, _ = data.load_model()
    model.to(device)
    train_ctx = data.contexts("train")
    if tokens is not None:
        train_ctx = train_ctx[: -(-tokens // (train_ctx.shape[1] - 1))]
    source = {k: data.to_dict()[k] for k in ("model", "context", "text", "fingerprint")}
    harvest_to_cache(
        model, train_ctx, hooks, out, source, batch_size, shard_contexts, progress, dtype
    )
    return ActivationCache(out)


__all__ = [
    "KINDS",
    "SHAPED_BY_DATA",
    "DataSpec",
    "Given",
    "HeldOut",
    "Recorded",
    "Run",
    "build_owned",
    "build_sae",
    "check_harvest",
    "check_tokens",
    "final_metrics",
    "find_runs",
    "harvest",
    "hook_run",
    "hook_specs",
    "hooks_of",
    "is_layered",
    "parse_hooks",
    "passes",
    "passes_note",
    "peer_folder",
    "peer_format",
    "peer_spec",
    "resume_hooks",
    "resume_run",
    "run_metadata",
    "sae_dirs",
    "sae_folders",
    "steps_for_tokens",
    "train_hooks",
    "train_run",
]

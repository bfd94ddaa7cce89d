"""Several hook points in one run: the model runs once per batch, every hook point's
activations are taken in that forward pass, and one SAE per hook point trains on its own
(`lockstep`). With `--parallel layers` the SAEs are spread over the ranks and each rank runs
the model on its share of every batch; the owners get their hook points' whole batches
(`parallel.layers.Exchange`). Either way each SAE trains exactly as a run of that hook point
alone on the same batches.

A run of several hook points is a folder with `hooks.json` (the hook points, their folders,
the world size) and one subfolder per hook point, itself a complete run of one SAE (cfg.json,
metrics.jsonl, checkpoint, and start.json: what it starts from, so that a resume can start
afresh a hook point stopped before its first checkpoint): `Run.open(path, hook=...)` opens
one (`hook_run`). Every check runs before hooks.json is written, and a folder none of whose
hook points saved a checkpoint holds no run (a new one may start there).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saescope.activations import ModelBatches
from saescope.atomic import atomic_write_bytes
from saescope.data.stream import IndexedBatches
from saescope.errors import ConfigError, FormatError, InputError
from saescope.parallel import DDPGroup
from saescope.parallel.layers import Exchange, owners, shares
from saescope.runs.data import DataSpec
from saescope.runs.lockstep import Driver, Job
from saescope.runs.resume import Given, Recorded
from saescope.saes import SAE, io, make_sae
from saescope.training import CHECKPOINT_FILE, TrainConfig, TrainResult, mixed, train
from saescope.training.checkpoint import check_world_size, jsonable, mismatch

HOOKS_FILE = "hooks.json"
START_FILE = "start.json"
"""In each hook point's folder: what its run starts from (`_write_start`)."""


def parse_hooks(text: str | Sequence[str]) -> list[str]:
    """Hook points from `--hook a,b,c` (or a list): distinct, none empty."""
    hooks = [h.strip() for h in (text.split(",") if isinstance(text, str) else text)]
    if not all(hooks):
        raise ConfigError(f"--hook {','.join(hooks)} names an empty hook point; give a,b,c")
    twice = sorted({h for h in hooks if hooks.count(h) > 1})
    if twice:
        raise ConfigError(f"--hook names {', '.join(twice)} more than once; give each once")
    return hooks


def hook_folder(hook: str) -> str:
    """The subfolder of a hook point's SAE: its name, ':' as '_' (layers.1.mlp:in ->
    layers.1.mlp_in)."""
    return hook.replace(":", "_").replace("/", "_")


def is_layered(path: str | Path) -> bool:
    """Whether the folder is a run of several hook points."""
    return (Path(path) / HOOKS_FILE).is_file()


def read_layout(path: str | Path) -> dict[str, Any]:
    """hooks.json: {"hooks": [...], "folders": {hook: subfolder}, "world_size": W}."""
    file = Path(path) / HOOKS_FILE
    try:
        layout = json.loads(file.read_text())
        assert isinstance(layout["hooks"], list) and isinstance(layout["folders"], dict)
    except (OSError, ValueError, KeyError, AssertionError):
        raise FormatError(f"{file} is not saescope's list of hook points; is it damaged?") from None
    return layout


def hook_run(path: str | Path, hook: str | None) -> Path:
    """The folder of one hook point's SAE in a run of several; a one-line error listing them
    when `hook` is None or not one of them."""
    layout = read_layout(path)
    hooks = ", ".join(layout["hooks"])
    if hook is None:
        raise InputError(
            f"{path} holds SAEs of several hook points ({hooks}); choose one with --hook"
        )
    if hook not in layout["folders"]:
        raise InputError(f"{path} has no SAE at hook point {hook!r}; its hook points: {hooks}")
    return Path(path) / layout["folders"][hook]


def _checkpointed(out: Path, hooks: Sequence[str]) -> list[bool]:
    """Whether each hook point's folder holds a checkpoint."""
    return [(out / hook_folder(h) / CHECKPOINT_FILE).is_file() for h in hooks]


def _check_fresh(out: Path, overwrite: bool) -> None:
    """A new run's folder must not hold one already (unless overwritten). A run of several
    hook points none of which saved a checkpoint (it failed early) is no run: it starts
    afresh."""
    held = is_layered(out) and any(_checkpointed(out, read_layout(out)["hooks"]))
    if not overwrite and (held or (out / CHECKPOINT_FILE).is_file()):
        raise ConfigError(
            f"{out} already holds a run; resume it (--resume), choose another folder, "
            "or pass --overwrite"
        )


def _write_layout(out: Path, hooks: Sequence[str], world_size: int) -> None:
    layout = {
        "hooks": list(hooks),
        "folders": {h: hook_folder(h) for h in hooks},
        "world_size": world_size,
        "parallel": "layers" if world_size > 1 else None,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / HOOKS_FILE, (json.dumps(layout, indent=2) + "\n").encode())


def _write_start(folder: Path, sae: SAE, data: DataSpec, batch_size: int) -> None:
    """What a hook point's run starts from (its SAE's config, its data, the batch size), so
    that a resume can start it afresh when it was stopped before its first checkpoint."""
    start = {"sae": jsonable(sae.cfg.to_dict()), "data": data.to_dict(), "batch_size": batch_size}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / START_FILE, (json.dumps(start, indent=2) + "\n").encode())


def owned(n: int, group: DDPGroup | None) -> list[int]:
    """The indices of the n hook points' SAEs this process trains (all of them alone)."""
    rank, size = (group.rank, group.size) if group else (0, 1)
    return [j for j, r in enumerate(owners(n, size)) if r == rank]


def build_owned(
    n: int, group: DDPGroup | None, seed: int, build: Callable[[int], SAE]
) -> list[SAE | None]:
    """The SAEs of n hook points, only those this process trains (None for the others), each
    `build(j)` just after seeding torch with `seed`: each is the SAE a run of its hook point
    alone makes, and a process holds only its own in memory."""
    mine = set(owned(n, group))
    saes: list[SAE | None] = []
    for j in range(n):
        if j in mine:
            torch.manual_seed(seed)
        saes.append(build(j) if j in mine else None)
    return saes


# ----- the data of several hook points --------------------------------------------------------


def hook_specs(data: DataSpec, hooks: Sequence[str]) -> list[DataSpec]:
    """The spec of each hook point of one source (a model on the fly or a cache): the model
    and text loaded once for all."""
    if data.kind not in ("model", "cache"):
        raise ConfigError("several hook points need --model (on the fly) or a cache of them")
    if data.target is not None:
        raise ConfigError("--target trains one transcoder; give one --hook with it")
    specs = []
    for h in hooks:
        spec = dataclasses.replace(data, hook=h)
        spec._memo.update(data._memo)  # type: ignore[attr-defined]
        specs.append(spec)
    return specs


class Joint:
    """Batches of several hook points of one source: batch i's rows [lo, hi) at each, from
    one forward pass of the model (on the fly), or read from a cache hook point by hook
    point (the same rows: one seed, one cache)."""

    def __init__(self, streams: Sequence[IndexedBatches]) -> None:
        self.streams = list(streams)
        sizes = {s.batch_size for s in streams}
        if len(sizes) != 1:
            raise ConfigError(f"the hook points' streams give batches of {sorted(sizes)} rows")
        self.batch_size = sizes.pop()
        first = self.streams[0]
        self.model = isinstance(first, ModelBatches) and all(
            isinstance(s, ModelBatches) and s.model is first.model for s in self.streams
        )

    def parts(self, i: int, lo: int, hi: int) -> list[Tensor]:
        if self.model:
            first: ModelBatches = self.streams[0]  # type: ignore[assignment]
            specs = [s.hooks.x for s in self.streams]  # type: ignore[attr-defined]
            rows = first.rows_at(i, lo, hi, specs)
            return [rows[s] for s in specs]
        return [s.part(i, lo, hi)[0] for s in self.streams]


# ----- training ------------------------------------------------------------------------------


def train_hooks(
    saes: Sequence[SAE | None],
    datas: Sequence[DataSpec],
    streams: Sequence[IndexedBatches],
    cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    log: Sequence[str] = (),
    group: DDPGroup | None = None,
) -> dict[str, TrainResult]:
    """One SAE per hook point (`datas[j].hook`, `streams[j]` its stream) trained in one pass
    over the source, each into out_dir/<hook folder> as a run of its own. With `group`
    (`--parallel layers`) the SAEs are spread over the ranks (`parallel.layers.owners`;
    `saes[j]` may be None where this rank does not train it, `build_owned`); returns this
    process's SAEs' results by hook point. In a resume, a hook point stopped before its first
    checkpoint starts afresh (its SAE as a fresh run's) while the others continue."""
    hooks = parse_hooks([d.hook or "" for d in datas])
    out, size = Path(out_dir), group.size if group else 1
    joint = Joint(streams)  # every check before anything is written
    rows, rank = joint.batch_size, group.rank if group else 0
    if group is not None and rows < size:
        raise ConfigError(f"the batch ({rows} rows) is smaller than the {size} processes")
    mine = owned(len(hooks), group)
    if any(saes[j] is None for j in mine):
        raise ConfigError("train_hooks needs the SAE of every hook point this process trains")
    if resume:
        check_world_size(read_layout(out).get("world_size", 1), size, out)
        done = _checkpointed(out, hooks)
        if not any(done):
            raise FormatError(f"nothing to resume: no hook point of {out} saved a checkpoint")
    else:
        _check_fresh(out, overwrite)
        if group is not None:  # every rank has looked before rank 0 writes
            group.sum_(torch.zeros(1))
        if rank == 0:
            _write_layout(out, hooks, size)
        done = [False] * len(hooks)
    # the batches a fresh run reads: its steps, or more when its initialisation takes more
    fresh_end = max(cfg.steps, -(-cfg.init_samples // rows))
    # the precision settled once for all (auto resolved; a resume keeps what the run
    # recorded): the runs train at it and the batches are made at it (`Driver`)
    first = out / hook_folder(hooks[done.index(True) if any(done) else 0])
    cfg = mixed.settle(cfg, first, resume, rank)
    jobs = []
    for j in mine:
        folder, quiet = out / hook_folder(hooks[j]), rank != 0 or j != mine[0]
        sae, again = saes[j], done[j]
        assert sae is not None
        if not again:
            _write_start(folder, sae, datas[j], rows)
        run = _runner(sae, datas[j], rows, cfg, folder, again, overwrite or resume, log, quiet)
        jobs.append(Job(run, hooks[j], end=cfg.steps if again else fresh_end))
    if group is None:
        make = lambda i: joint.parts(i, 0, rows)  # noqa: E731
    else:
        owner = owners(len(hooks), size)
        exchange = Exchange(
            group, [[j for j in range(len(hooks)) if owner[j] == r] for r in range(size)]
        )
        lo, hi = shares(rows, size)[rank]

        def make(i: int) -> list[Tensor]:
            got = exchange(joint.parts(i, lo, hi), rows)
            return [got[j] for j in mine]

    results = Driver(jobs, make, group, cfg.precision).run()
    return {job.name: r for job, r in zip(jobs, results, strict=True)}


def _runner(
    sae: SAE,
    data: DataSpec,
    batch_size: int,
    cfg: TrainConfig,
    out: Path,
    resume: bool,
    overwrite: bool,
    log: Sequence[str],
    quiet: bool,
) -> Any:
    """One hook point's run of `training.train`, given the batches (a `lockstep.Feed`)."""
    metadata = {"data": data.to_dict(), "batch_size": batch_size}  # as runs.run_metadata
    run_cfg = dataclasses.replace(cfg, progress=cfg.progress and not quiet)

    def run(feed: Any) -> TrainResult:
        return train(sae, feed, run_cfg, out, resume, metadata, overwrite, log)

    return run


def resume_hooks(
    out_dir: str | Path,
    given: Given | None = None,
    log: Sequence[str] = (),
    group: DDPGroup | None = None,
) -> dict[str, TrainResult]:
    """Continue a run of several hook points with the settings each hook point's checkpoint
    recorded (a given setting must be the run's, as `runs.resume_run` checks), on the world
    size it was trained on. A hook point stopped before its first checkpoint starts afresh
    from what its folder's start.json records. Each process builds only its own SAEs."""
    out, given = Path(out_dir), given or Given()
    layout = read_layout(out)
    check_world_size(layout.get("world_size", 1), group.size if group else 1, out)
    if given.data.get("hook") is not None and parse_hooks(given.data["hook"]) != layout["hooks"]:
        raise mismatch("hook", ",".join(layout["hooks"]), given.data["hook"])
    one = dataclasses.replace(given, data={k: v for k, v in given.data.items() if k != "hook"})
    folders = [out / layout["folders"][h] for h in layout["hooks"]]
    found = [Recorded.read(f) if (f / CHECKPOINT_FILE).is_file() else None for f in folders]
    first = next((r for r in found if r is not None), None)
    if first is None:
        raise FormatError(f"nothing to resume: no hook point of {out} saved a checkpoint")
    mine = set(owned(len(folders), group))
    saes: list[SAE | None] = []
    datas, streams, cfg = [], [], first.train
    for j, (folder, rec) in enumerate(zip(folders, found, strict=True)):
        rec = rec or _start_record(folder, first.train)
        rec.check(one)
        if datas and rec.data.kind == "model" and _same_text(rec.data, datas[0]):
            rec.data._memo.update(datas[0]._memo)  # type: ignore[attr-defined]
        data, stream, cfg = rec.open(one)
        if given.tokens is not None and -(-given.tokens // stream.tokens_per_batch) != cfg.steps:
            raise mismatch("tokens", cfg.steps * stream.tokens_per_batch, given.tokens)
        if j in mine:  # seeded as a fresh run's (a checkpoint's weights replace it)
            torch.manual_seed(cfg.seed)
        saes.append(make_sae(rec.saes[0]) if j in mine else None)
        datas.append(data)
        streams.append(stream)
    # the rate: the hook points' own where they differ (SAEs of other widths given no lr:
    # each resumes at the one its checkpoint records, `checkpoint.settle_lr`)
    rates = {r.train.lr for r in found if r is not None}
    cfg = dataclasses.replace(cfg, lr=rates.pop() if len(rates) == 1 else None)
    return train_hooks(saes, datas, streams, cfg, out, True, log=log, group=group)


def _start_record(folder: Path, train: TrainConfig) -> Recorded:
    """What a hook point's run stopped before its first checkpoint starts from (its
    start.json), with the training config of the others."""
    try:
        start = json.loads((folder / START_FILE).read_text())
        data = DataSpec.from_dict(start["data"])
        return Recorded((start["sae"],), data, start["batch_size"], train)
    except (OSError, ValueError, KeyError, ConfigError):
        raise FormatError(
            f"nothing to resume in {folder}: no {CHECKPOINT_FILE} and no readable "
            f"{START_FILE}; train the run afresh (--overwrite)"
        ) from None


def _same_text(a: DataSpec, b: DataSpec) -> bool:
    return (a.model, a.text, a.context, a.fingerprint) == (
        b.model,
        b.text,
        b.context,
        b.fingerprint,
    )


def hooks_of(path: str | Path) -> list[str]:
    """The hook points of a run of several ([] for any other folder)."""
    return list(read_layout(path)["hooks"]) if is_layered(path) else []


def final_metrics(path: str | Path) -> dict[str, dict[str, Any]]:
    """Each hook point's final metrics, as its folder's cfg.json records them."""
    out = {}
    for hook, folder in read_layout(path)["folders"].items():
        meta = io.read_cfg(Path(path) / folder).get("metadata") or {}
        out[hook] = meta.get("final_metrics") or {}
    return out

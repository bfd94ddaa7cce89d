"""Resuming a run with the settings it recorded. Its checkpoint holds each SAE's config, the
data (a `DataSpec`), the batch size and the training config (`Recorded`); a setting a caller
names as well (`Given`) must be the run's, else a one-line error names it and both values.
The training settings that say how a run is watched, saved and where it runs
(`training.NEUTRAL_FIELDS`: progress bar, log and checkpoint intervals, device) may differ:
the given ones apply to the rest of the run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saescope.data.stream import IndexedBatches
from saescope.errors import ConfigError, FormatError, check_keys
from saescope.runs.data import DataSpec, model_ref, text_ref
from saescope.saes import architecture
from saescope.training import CHECKPOINT_FILE, NEUTRAL_FIELDS, TrainConfig, checkpoint
from saescope.training.checkpoint import mismatch

DATA_OPTIONS = ("data", "model", "hook", "target", "text", "context")
"""The data options a caller may give (besides "task", the synthetic task's fields)."""


@dataclass(frozen=True)
class Given:
    """Settings a caller names explicitly (None or empty: not named, so the run's apply)."""

    arch: str | None = None
    """The architecture."""
    sae: dict[str, Any] = field(default_factory=dict)
    """SAE config fields: d_sae, k, l1_coef, ..."""
    data: dict[str, Any] = field(default_factory=dict)
    """Data options: "data" ("synthetic", an activation file or cache), "model", "hook",
    "target", "text", "context", and "task" (a dict of the synthetic task's fields)."""
    batch_size: int | None = None
    """Tokens per batch (as given to `DataSpec.open`)."""
    tokens: int | None = None
    """Training tokens: the steps they make must be the run's."""
    train: dict[str, Any] = field(default_factory=dict)
    """TrainConfig fields."""


@dataclass(frozen=True)
class Recorded:
    """What a run's checkpoint records about the run."""

    saes: tuple[dict[str, Any], ...]
    """Each SAE's config (with its "architecture")."""
    data: DataSpec
    batch_size: int | None
    """As the stream took it (None: unknown, a checkpoint of an iterable without one)."""
    train: TrainConfig

    @classmethod
    def read(cls, out_dir: str | Path) -> Recorded:
        meta = checkpoint.read_meta(out_dir)
        if meta is None:
            raise FormatError(
                f"nothing to resume: no {CHECKPOINT_FILE} in {out_dir}; drop --resume"
            )
        run = meta.get("run") or {}
        if not run.get("data"):
            raise FormatError(
                f"{out_dir}'s checkpoint does not record its data (a run of training.train); "
                "resume it from Python: train(..., resume=True)"
            )
        try:
            data = DataSpec.from_dict(run["data"])
            fields = [f.name for f in dataclasses.fields(TrainConfig)]
            check_keys(meta["train"], fields, "the training config")
            train = TrainConfig(**meta["train"])
        except ConfigError as e:
            raise FormatError(f"{Path(out_dir) / CHECKPOINT_FILE}: {e}") from None
        saes = tuple(s["cfg"] for s in meta["saes"])
        return cls(saes, data, run.get("batch_size") or _batch_size(meta), train)

    def check(self, given: Given) -> None:
        """Refuse a given setting other than the run's (naming it and both values)."""
        for cfg in self.saes:
            if given.arch is not None and given.arch != cfg["architecture"]:
                raise mismatch("arch", cfg["architecture"], given.arch)
            for name, value in given.sae.items():
                recorded = _recorded_field(cfg, name)
                if recorded != value:
                    raise mismatch(name, recorded, value)
        check_keys(given.data, (*DATA_OPTIONS, "task"), "the data")
        for name, value in given.data.items():
            self._check_data(name, value)
        check_keys(given.train, [f.name for f in dataclasses.fields(TrainConfig)], "training")
        for name, value in given.train.items():
            if name == "precision" and value == "auto":  # auto keeps what the run recorded
                continue
            if name not in NEUTRAL_FIELDS and getattr(self.train, name) != value:
                raise mismatch(name, getattr(self.train, name), value)

    def _check_data(self, name: str, value: Any) -> None:
        spec = self.data
        if name == "task":
            task = dataclasses.asdict(spec.task) if spec.task and spec.kind == "synthetic" else {}
            for key, v in value.items():
                if task.get(key) != v:
                    raise mismatch(key, task.get(key), v)
            return
        if name == "data":
            ours = spec.path if spec.kind in ("file", "cache") else spec.kind
            if spec.kind == "model":
                ours = f"{spec.model} (on the fly)"
            theirs = "synthetic" if str(value) == "synthetic" else str(Path(value).resolve())
        elif name == "model":
            ours, theirs = (spec.model if spec.kind == "model" else None), model_ref(value)
        elif name == "text":
            ours, theirs = spec.text, text_ref(value)
        else:  # hook, target, context
            ours, theirs = getattr(spec, name), value
        if ours != theirs:
            raise mismatch(name, ours, theirs)

    def open(self, given: Given) -> tuple[DataSpec, IndexedBatches, TrainConfig]:
        """The run's data as it is now (a cache that grew is refused on resume), its stream at
        the run's batch size (a given one must make the same batches) and the training config
        with the given neutral fields."""
        data = self.data
        if data.kind == "cache":
            data = DataSpec.cache(data.path, data.hook, data.target, data.seed)  # type: ignore[arg-type]
        size = given.batch_size or self.batch_size
        if size is None:
            raise ConfigError("the checkpoint does not record the batch size; give --batch-size")
        stream = data.open(size)
        if self.batch_size is not None and stream.batch_size != self.batch_size:
            raise mismatch("batch_size", self.batch_size, given.batch_size)
        neutral = {k: v for k, v in given.train.items() if k in NEUTRAL_FIELDS}
        return data, stream, dataclasses.replace(self.train, **neutral)


def _batch_size(meta: dict[str, Any]) -> int | None:
    """A batch size from the tokens and steps of a checkpoint that does not record it (made
    before saescope recorded it): every batch of an `IndexedBatches` has the same size."""
    step, tokens = meta.get("step", 0), meta.get("tokens", 0)
    return tokens // step if step and tokens % step == 0 else None


def _recorded_field(cfg: dict[str, Any], name: str) -> Any:
    """The run's value of an SAE config field: as recorded, or its default when cfg.json
    leaves it out (fields written only when set, such as target_l0); a field the run's
    architecture does not have is a one-line error."""
    if name in cfg:
        return cfg[name]
    fields = {f.name: f for f in dataclasses.fields(architecture(cfg["architecture"]).config_cls)}
    if name not in fields or fields[name].default is dataclasses.MISSING:
        raise ConfigError(f"{name} does not apply to the run's {cfg['architecture']}")
    return fields[name].default

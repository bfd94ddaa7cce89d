"""The runs under a folder, one row per SAE (`saescope runs DIR`), read from each run's cfg.json
files and its checkpoint's header alone: no weights are loaded, so listing a folder of large
runs is quick.

A run is a folder holding `cfg.json` (one SAE), or `sae_0/`, `sae_1/`, ... each holding one
(several SAEs trained on one stream), or a checkpoint (a run still training or stopped before
its last step, described from the checkpoint's header). Folders inside a run are not searched.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from saescope.errors import FormatError, InputError
from saescope.saes import io
from saescope.training.checkpoint import CHECKPOINT_FILE

_SAE_DIR = re.compile(r"sae_(\d+)")
_NOT_METRICS = ("step", "tokens", "sae")
"""Keys of a logged metrics row that are not metrics (the row's own step and tokens are kept
as `steps` and `tokens`)."""


def find_runs(root: str | Path) -> list[dict[str, Any]]:
    """One row per SAE of every run under `root` (root itself included), in path order: run
    (its folder), sae (sae_i of a run of several, else None), finished, architecture, d_in,
    d_out, d_sae, k (None where the architecture has none), data (a short description) and
    data_spec (the run's DataSpec as saved, or None), steps (done), total_steps, tokens, and
    the metrics logged last (l0, explained_variance, dead_fraction, ...). A cfg.json that cannot
    be read gives a row with `error`. An empty list: no runs there."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root} does not exist; give a folder holding runs from saescope train")
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; give the folder that holds the runs")
    return [row for folder in run_folders(root) for row in summarise(folder)]


def run_folders(root: Path) -> list[Path]:
    """Every run folder under root (root included), sorted; hidden folders are skipped."""
    found = []
    for here, subdirs, _ in os.walk(root):
        folder = Path(here)
        if _is_run(folder):
            found.append(folder)
            subdirs.clear()  # a run's own folders (sae_i/) are part of it
        else:
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    return sorted(found)


def _is_run(folder: Path) -> bool:
    return bool(_sae_dirs(folder)) or (folder / CHECKPOINT_FILE).is_file()


def _sae_dirs(folder: Path) -> list[Path]:
    """The folders of a run's saved SAEs: the run itself, else its sae_i/ in order of i."""
    if io.is_saved(folder):
        return [folder]
    numbered = [p for p in folder.glob("sae_*") if _SAE_DIR.fullmatch(p.name) and io.is_saved(p)]
    return sorted(numbered, key=lambda p: int(p.name[4:]))


def summarise(folder: str | Path) -> list[dict[str, Any]]:
    """The rows of one run folder (see `find_runs`): from the saved SAEs of a finished run,
    else from the checkpoint of one that has not finished."""
    folder = Path(folder)
    ck = _checkpoint_meta(folder)
    dirs = _sae_dirs(folder)
    if ck is None and not dirs:
        error = f"{folder / CHECKPOINT_FILE} is not a readable saescope checkpoint"
        return [{"run": str(folder), "sae": None, "finished": None, "error": error}]
    if ck is not None and (not dirs or ck.get("step", 0) < ck.get("train", {}).get("steps", 0)):
        return _from_checkpoint(folder, ck)
    return [_from_cfg(folder, d, len(dirs) > 1) for d in dirs]


def _from_cfg(run: Path, sae_dir: Path, several: bool) -> dict[str, Any]:
    head = {"run": str(run), "sae": sae_dir.name if several else None}
    try:
        cfg = io.read_cfg(sae_dir)
    except FormatError as e:
        return {**head, "finished": None, "error": str(e)}
    meta = cfg.get("metadata") or {}
    total = (meta.get("training") or {}).get("steps")
    return _row(head, cfg, meta.get("data"), meta.get("final_metrics"), total, finished=True)


def _from_checkpoint(run: Path, ck: dict[str, Any]) -> list[dict[str, Any]]:
    saes = ck.get("saes") or []
    total = (ck.get("train") or {}).get("steps")
    data = (ck.get("run") or {}).get("data")
    rows = []
    for i, s in enumerate(saes):
        head = {"run": str(run), "sae": f"sae_{i}" if len(saes) > 1 else None}
        last = {**(s.get("last_log") or {}), "step": ck.get("step"), "tokens": ck.get("tokens")}
        rows.append(_row(head, s.get("cfg") or {}, data, last, total, finished=False))
    return rows


def _row(
    head: dict[str, Any],
    cfg: dict[str, Any],
    data: dict[str, Any] | None,
    last: dict[str, Any] | None,
    total_steps: int | None,
    finished: bool,
) -> dict[str, Any]:
    last = last or {}
    row = {
        **head,
        "finished": finished,
        "architecture": cfg.get("architecture"),
        **{k: cfg.get(k) for k in ("d_in", "d_out", "d_sae", "k")},
        "data": describe_data(data),
        "data_spec": data,
        "steps": last.get("step"),
        "total_steps": total_steps,
        "tokens": last.get("tokens"),
    }
    row.update({k: v for k, v in last.items() if k not in _NOT_METRICS and k not in row})
    return row


def describe_data(data: dict[str, Any] | None) -> str:
    """A run's data in a few words: "model glassllm layers.2", "cache PATH layers.0.mlp:in ->
    layers.0.mlp", "file PATH", "synthetic"; "-" when the run does not say."""
    if not data:
        return "-"
    kind = data.get("kind", "?")
    where = {"model": data.get("model"), "cache": data.get("path"), "file": data.get("path")}
    parts = [kind, _short(where.get(kind)), data.get("hook")]
    if data.get("target"):
        parts += ["->", data["target"]]
    return " ".join(str(p) for p in parts if p)


def _short(path: str | None) -> str | None:
    """A path relative to the working folder when it lies inside it."""
    if path is None or not Path(path).is_absolute():
        return path
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def _checkpoint_meta(folder: Path) -> dict[str, Any] | None:
    """The checkpoint's JSON from the file's header (its tensors are not read); None when there
    is no checkpoint or it cannot be read."""
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as fh:
            meta = json.loads((fh.metadata() or {})["saescope_checkpoint"])
    except (SafetensorError, OSError, KeyError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None

"""The runs a server was started with, each opened on first use: its SAEs, its model (loaded
once, by the run's DataSpec) and each SAE's feature index. Requests name a run by the name
given here (the folder's name, made unique), never by a path, so no request reaches a file
the server was not started with. Calls that run the model hold the run's lock (one forward
pass or generation at a time per run)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saescope.analysis import FeatureIndex
from saescope.errors import ConfigError, InputError, SaescopeError
from saescope.runs import (
    Run,
    hook_run,
    is_layered,
    peer_folder,
    peer_format,
    peer_spec,
    sae_folders,
)


class NotFound(InputError):
    """A run, SAE or feature a request names that does not exist (HTTP 404)."""


def sae_names(path: Path) -> list[str]:
    """The names `Run.open` gives the SAEs of a run folder, read without loading them."""
    return [p.name for p in sae_folders(path)]


@dataclass
class RunState:
    """One run: opened, and each SAE's index opened, on first use."""

    name: str
    path: Path
    saes: list[str]
    model: str | None = None
    """The model and hook point of a peer library's SAE folder (None: what it says)."""
    hook: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    _run: Run | None = None
    _indexes: dict[str, Any] = field(default_factory=dict)
    _open: threading.Lock = field(default_factory=threading.Lock)

    @property
    def run(self) -> Run:
        with self._open:
            if self._run is None:
                self._run = Run.open(self.path, model=self.model, hook=self.hook)
            return self._run

    def sae_name(self, sae: str | None) -> str:
        """The SAE a request means: the one named, or the run's only one."""
        if sae is None:
            if len(self.saes) > 1:
                raise InputError(
                    f"run {self.name} holds several SAEs ({', '.join(self.saes)}); "
                    "choose one with sae=NAME"
                )
            return self.saes[0]
        if sae not in self.saes:
            raise NotFound(f"run {self.name} has no SAE {sae!r}; its SAEs: {', '.join(self.saes)}")
        return sae

    def index(self, sae: str | None) -> Any:
        """The feature index of one SAE (a `saescope.analysis.FeatureIndex`), opened once."""
        name = self.sae_name(sae)
        with self._open:
            if name not in self._indexes:
                self._indexes[name] = open_index(self.path, name, len(self.saes) > 1)
            return self._indexes[name]

    def describe(self) -> dict[str, Any]:
        """What /api/runs says of the run (nothing is loaded for it but the indexes)."""
        saes = []
        for name in self.saes:
            try:
                info, error = self.index(name).info, None
            except SaescopeError as e:
                info, error = None, str(e)
            saes.append({"name": name, "index": info, "error": error})
        return {"name": self.name, "path": str(self.path), "saes": saes}

    def close(self) -> None:
        with self._open:
            for idx in self._indexes.values():
                idx.close()
            self._indexes.clear()


def open_index(path: Path, sae: str, several: bool) -> Any:
    """The FeatureIndex of SAE `sae` of the run at `path`."""
    return FeatureIndex.open(path, sae=sae if several else None)


def load_runs(
    paths: list[Path], model: str | None = None, hook: str | None = None
) -> dict[str, RunState]:
    """The runs by unique name (a folder's name, then -2, -3, ... for repeats); a one-line
    error for a folder that holds no saved SAE, or a peer library's SAE folder that does not
    say its model or hook point when `model` or `hook` do not (they apply to every peer
    folder; saescope runs keep their own)."""
    if not paths:
        raise ConfigError("give at least one run folder to explore")
    out: dict[str, RunState] = {}
    for p in paths:
        path = Path(p).expanduser().resolve()
        if is_layered(path):  # a run of several hook points: the one `hook` picks
            path = hook_run(path, hook)
        names = sae_names(path) if path.is_dir() else []
        if not names:
            raise ConfigError(
                f"{p} holds no saved SAE (cfg.json); give a folder made by saescope train"
            )
        if peer_format(path):
            peer_spec(path, model, hook)
            path = peer_folder(path, hook)  # the SAE `hook` picks: its index is there
            names = sae_names(path)
        name, n = path.name, 1
        while name in out:
            n += 1
            name = f"{path.name}-{n}"
        out[name] = RunState(name, path, names, model, hook)
    return out

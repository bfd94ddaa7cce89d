"""`Run`: a trained run folder opened in one call: its SAEs, the data they were trained on
(a `DataSpec`), the training config, the model on first use, and evaluation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from saescope import interop
from saescope.data import ArticleTaskConfig, is_cache
from saescope.data.outliers import DEFAULT_FACTOR, OutlierRule
from saescope.errors import ConfigError, FormatError, InputError, check_keys
from saescope.evaluate import Outliers, evaluate, evaluate_in_model, plot_density
from saescope.models.downstream import check_batch_size
from saescope.runs.data import DataSpec, HeldOut
from saescope.runs.layers import hook_run, is_layered
from saescope.runs.peer import fit_model, peer_data, peer_folder, peer_format
from saescope.saes import SAE, io
from saescope.saes.io import is_saved
from saescope.training import TrainConfig
from saescope.training.config import check_device


def sae_folders(path: str | Path) -> list[Path]:
    """The saved SAEs of a folder, read without loading them: the folder itself when it is
    one SAE's folder (saescope's or a peer library's, see `peer_format`), else its sae_0,
    sae_1, ... folders that hold one (in number order: sae_2 before sae_10); [] for none."""
    path = Path(path)
    if is_saved(path) or peer_format(path):
        return [path]
    return sorted((p for p in path.glob("sae_*") if is_saved(p)), key=_number_order)


def _number_order(path: Path) -> tuple[int, str]:
    """sae_2 before sae_10: by the number's length, then by name."""
    return len(path.name), path.name


@dataclass
class Run:
    """A trained run folder: its SAEs by name (the folder's own name for a single SAE, else
    sae_0, sae_1, ...), the data they were trained on and the training config. A peer
    library's SAE folder opens as a run too (`format` names it; `train` is None, `metadata`
    what the folder says, `interop.metadata`)."""

    path: Path
    saes: dict[str, SAE]
    dirs: dict[str, Path]
    data: DataSpec | None
    train: TrainConfig | None
    metadata: dict[str, Any]
    format: str = "saescope"
    device: str = "cpu"
    """Where the SAEs are and the model runs (`open(device=)`)."""

    @classmethod
    def open(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        model: str | Path | None = None,
        hook: str | None = None,
        target: str | None = None,
        need_data: bool = True,
    ) -> Run:
        """The run at `path`. A peer library's SAE folder (SAELens, ...) belongs to the model,
        hook point (a transcoder's target too) and context its metadata names; `model`,
        `hook` and `target` supply or override them (see `runs.peer.peer_data`). A saescope
        run uses them only when it records no data of its own (an SAE saved through the
        Python API); else they are ignored. need_data=False (evaluating on other data, a
        file of activations): a model or hook that cannot be found leaves `data` None, and
        the model is not loaded, instead of a one-line error. device: where the SAEs are
        loaded and the model runs (cpu, cuda, cuda:N; a one-line error if unavailable). A run
        of several hook points (`runs.layers`) opens the SAE of `hook`, a one-line error
        listing them without it."""
        check_device(str(device))
        run = cls._open(Path(path), device, model, hook, target, need_data)
        run.device = str(device)
        if run.data is not None:
            run.data.place(run.device)
        return run

    @classmethod
    def _open(
        cls,
        path: Path,
        device: str | torch.device,
        model: str | Path | None,
        hook: str | None,
        target: str | None,
        need_data: bool,
    ) -> Run:
        if is_layered(path):  # a run of several hook points: `hook` picks one
            path = hook_run(path, hook)
        fmt = peer_format(path)
        if fmt is not None:
            return cls._open_peer(path, fmt, device, model, hook, target, need_data)
        found = sae_folders(path)
        if not found:
            raise ConfigError(
                f"{path} holds no saved SAE (cfg.json); give a folder made by saescope train "
                "or a peer library's SAE folder (SAELens)"
            )
        names = [path.name] if found == [path] else [p.name for p in found]
        saes = {n: SAE.load(p, device) for n, p in zip(names, found, strict=True)}
        meta = io.read_cfg(found[0]).get("metadata") or {}
        try:
            data = DataSpec.from_dict(meta["data"]) if meta.get("data") else None
            train_cfg = meta.get("training")
            if train_cfg is not None:
                check_keys(train_cfg, [f.name for f in dataclasses.fields(TrainConfig)], "training")
                train_cfg = TrainConfig(**train_cfg)
        except ConfigError as e:
            raise FormatError(f"{found[0] / io.CFG_FILE}: metadata: {e}") from None
        if data is None and (model is not None or meta.get("model_name")):
            # saved through the Python API, or converted from a peer: what it says, or the flags
            meta_peer = interop.metadata(found[0])
            data = _peer_data(path, meta_peer, model, hook, target, need_data)
        return cls(path, saes, dict(zip(names, found, strict=True)), data, train_cfg, meta)

    @classmethod
    def _open_peer(
        cls,
        path: Path,
        fmt: str,
        device: str | torch.device,
        model: str | Path | None,
        hook: str | None,
        target: str | None,
        need_data: bool = True,
    ) -> Run:
        meta = interop.metadata(path, hook)
        sae = interop.load(path, device, hook)
        data = _peer_data(path, meta, model, hook, target, need_data)
        own = peer_folder(path, hook)  # the SAE's own folder in a run of several
        return cls(own, {own.name: sae}, {own.name: own}, data, None, meta, fmt)

    def eval_data(
        self,
        data: str | Path | None = None,
        hook: str | None = None,
        target: str | None = None,
        task: dict[str, Any] | None = None,
    ) -> DataSpec | None:
        """The data `saescope eval --data ...` means for this run: None (the run's own held-out
        data) when no data is given, and for "synthetic" on a model or cache run; the run's
        synthetic task with `task`'s fields changed; a cache, whose hook and target default to
        the run's; or a file. A run that does not record its data (trained through the Python
        API on batches of its own) needs data named."""
        own, task = self.data, task or {}
        if data is None:
            if own is None:
                raise ConfigError(
                    f"{self.path} does not record what it was trained on (trained through the "
                    "Python API); give --data FILE (.npy, .safetensors or a cache) or synthetic"
                )
            if not (own.kind == "synthetic" and task):
                return None
            data = "synthetic"
        if str(data) == "synthetic":
            if own is not None and own.kind in ("model", "cache"):
                return None
            if own is not None and own.kind == "synthetic":
                return dataclasses.replace(own, task=dataclasses.replace(own.task, **task))  # type: ignore[arg-type]
            return DataSpec.synthetic(ArticleTaskConfig(**task)) if task or own is None else None
        if is_cache(data):
            hook = hook or (own.hook if own else None)
            return DataSpec.cache(data, hook, target or (own.target if own else None))
        return DataSpec.at(data, hook, target)

    @property
    def outliers(self) -> Outliers:
        """How the run treats outlier tokens, so that evaluation measures what training did:
        the rule it fitted (cfg.json `metadata.outliers`); for a run that recorded none, its
        training config's factor (a rule fitted on the evaluation data; runs made before
        saescope set outliers aside get the default); None for a run trained on every token,
        as a peer library's SAE is."""
        if self.format != "saescope":
            return None  # the peer libraries train on every token
        if self.metadata.get("outliers"):
            return OutlierRule.from_dict(self.metadata["outliers"])
        return self.train.outlier_factor if self.train is not None else DEFAULT_FACTOR

    @property
    def outlier_rule(self) -> OutlierRule | None:
        """The outlier rule the run fitted, to steer and search with (None: it recorded none,
        as runs from before outliers were set aside)."""
        rule = self.outliers
        return rule if isinstance(rule, OutlierRule) else None

    def sae(self, name: str | None = None) -> tuple[str, SAE]:
        """(name, SAE): the one called `name`, or the run's only one; a one-line error when the
        run has several and none is chosen, or none of that name."""
        names = ", ".join(self.saes)
        if name is None:
            if len(self.saes) > 1:
                raise InputError(
                    f"{self.path} holds several SAEs ({names}); choose one with --sae NAME"
                )
            return next(iter(self.saes.items()))
        if name not in self.saes:
            raise InputError(f"{self.path} has no SAE {name!r}; its SAEs: {names}")
        return name, self.saes[name]

    def only(self, name: str) -> Run:
        """The run with one of its SAEs (`sae`'s one-line error for a name it lacks)."""
        name, sae = self.sae(name)
        return dataclasses.replace(self, saes={name: sae}, dirs={name: self.dirs[name]})

    def held_out_contexts(self, tokens: int | None = None) -> Tensor:
        """Held-out contexts (token ids) of a model run's text: enough for about `tokens`
        tokens (at least one context), or all of them (None)."""
        if self.data is None or self.data.kind not in ("model", "cache") or not self.data.model:
            raise ConfigError(
                f"{self.path} was not trained on a model's activations; this needs a model run"
            )
        if tokens is not None and tokens < 1:
            raise ConfigError(f"--tokens must be at least 1, got {tokens}")
        contexts = self.data.contexts("test")
        if tokens is None:
            return contexts
        return contexts[: max(1, math.ceil(tokens / (contexts.shape[1] - 1)))]

    @property
    def model(self) -> nn.Module:
        """The run's model, loaded on first use, on the run's device."""
        if self.data is None:
            raise ConfigError(f"{self.path}: the run does not say what it was trained on")
        return self.data.load_model()[0]

    def evaluate(
        self,
        tokens: int = 65_536,
        data: DataSpec | None = None,
        plot: bool = True,
        batch_size: int | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Metrics of every SAE of the run: on the run's held-out data by default (with CE
        loss recovered and KL for a model, and `feature_density.png` in each SAE's folder),
        or on `data`: the first rows of a file or cache, or a synthetic task. batch_size:
        contexts per forward pass of a model (None: automatic; see `evaluate_in_model`)."""
        if data is None and self.data is None:
            raise ConfigError(f"{self.path}: the run does not name its data; give --data FILE")
        check_batch_size(batch_size)
        spec = data or self.data
        assert spec is not None
        spec.place(self.device)
        held = spec.head(tokens) if data is not None and spec.kind in ("file", "cache") else None
        out = {}
        for name, sae in self.saes.items():
            if held is None:  # fresh batches per SAE: held-out streams are single-use
                got = _evaluate(sae, spec.held_out(tokens), tokens, batch_size, self.outliers)
            else:
                got = _evaluate(sae, held, tokens, batch_size, self.outliers)
            if "density" in got:
                density = got.pop("density")
                if plot:
                    png = self.dirs[name] / "feature_density.png"
                    got["density_plot"] = str(plot_density(density, png, name))
            out[name] = got
        return out


def _peer_data(
    path: Path,
    meta: dict[str, Any],
    model: str | Path | None,
    hook: str | None,
    target: str | None,
    need: bool,
) -> DataSpec | None:
    """The model data a peer SAE (or one converted from a peer) belongs to, fitted to its
    model; unless `need`, None where the model or hook cannot be found, and no model loaded."""
    try:
        spec = peer_data(path, meta, model, hook, target)
    except ConfigError:
        if need:
            raise
        return None
    return fit_model(path, spec, check_hook=hook is None) if need else spec


def _evaluate(
    sae: SAE, data: HeldOut, tokens: int, batch_size: int | None, outliers: Outliers
) -> dict[str, Any]:
    if data.model is not None and data.contexts is not None and data.hooks is not None:
        x, y, model, ctx = data.hooks.x, data.hooks.y, data.model, data.contexts
        return evaluate_in_model(sae, model, ctx, x, y, tokens, batch_size, outliers)
    out = evaluate(sae, data.batches, tokens, features=data.features, outliers=outliers)
    if data.held_out is False:
        out["held_out"] = False
    return out

"""A peer library's SAE folder (SAELens, and the formats `saescope.interop` reads) opened as a
run: which model, hook point and context it belongs to, from what the folder says
(`interop.metadata`) or from what the caller gives (`--model`, `--hook`, which win)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from saescope import interop
from saescope.errors import ConfigError, FormatError
from saescope.interop import dictionary_learning, sparsify
from saescope.models import MODELS, max_context
from saescope.models.hooks import HookPoint
from saescope.runs.data import DataSpec, model_ref

DEFAULT_CONTEXT = 128
"""Tokens per context when the folder does not say (as `saescope train`'s default)."""


def _known() -> str:
    return f"{', '.join(sorted(MODELS))} or a local Hugging Face model folder"


def _model(path: Path, meta: dict[str, Any], model: str | Path | None) -> str:
    if model is not None:
        return model_ref(model)
    claimed = meta.get("model_name")
    if claimed is None:
        raise ConfigError(
            f"{path} does not say which model it belongs to; give --model ({_known()})"
        )
    if claimed not in MODELS:
        raise ConfigError(
            f"{path} says it belongs to model {claimed!r}, which saescope does not have; "
            f"give --model ({_known()})"
        )
    return str(claimed)


def peer_data(
    path: str | Path,
    meta: dict[str, Any],
    model: str | Path | None = None,
    hook: str | None = None,
    target: str | None = None,
) -> DataSpec:
    """The data a peer SAE belongs to, as a DataSpec of a model on saescope's default corpus:
    the model (`model`, else the folder's `model_name` when saescope has it), the hook point
    (`hook`, else the folder's `hook_name`), a transcoder's target (`target`, else the folder's
    `hook_name_out`) and the context (the folder's `context_size`, else 128; `fit_model`
    cuts it to what the model takes). A one-line
    ConfigError when the folder does not say and none is given."""
    path = Path(path)
    name = _model(path, meta, model)
    hook = hook or meta.get("hook_name")
    if not hook:
        raise ConfigError(
            f"{path} does not say which hook point it reads; give --hook "
            f"(`saescope hooks {model or meta.get('model_name')}` lists them)"
        )
    target = target or meta.get("hook_name_out")
    context = meta.get("context_size") or DEFAULT_CONTEXT
    if not isinstance(context, int) or context < 2:
        raise ConfigError(f"{path} gives context_size {context!r}; it must be an integer >= 2")
    return DataSpec("model", model=name, hook=hook, target=target, context=context)


def fit_model(path: str | Path, spec: DataSpec, check_hook: bool = True) -> DataSpec:
    """`spec` checked against its model, loaded here (once: the spec keeps it): the hook point
    the folder names must be one of the model's (`check_hook`; a one-line error saying to give
    --hook, as for SAELens's TransformerLens names), and a context longer than the model takes
    (an SAE of another model with longer contexts) is cut to the model's."""
    model = spec.load_model()[0]
    if check_hook:
        point = HookPoint.parse(spec.hooks.x).path
        if point not in dict(model.named_modules()):
            raise ConfigError(
                f"{path} names hook point {spec.hook!r}, which {spec.model} does not have; give "
                f"--hook (`saescope hooks {spec.model}` lists them)"
            )
    limit = max_context(model)
    if limit is None or (spec.context or DEFAULT_CONTEXT) <= limit:
        return spec
    fitted = dataclasses.replace(spec, context=limit)
    fitted._memo["model"] = spec._memo["model"]  # loaded once
    return fitted


def peer_format(path: str | Path) -> str | None:
    """The format of a peer library's SAE folder (`interop.detect`: "saelens", ...); None for
    saescope's own folders and for folders holding no SAE."""
    try:
        fmt = interop.detect(path)
    except FormatError:
        return None
    return None if fmt == "saescope" else fmt


def peer_folder(path: str | Path, hook: str | None = None) -> Path:
    """The folder of the one SAE `hook` picks in a peer folder: a sparsify run's hook point,
    a dictionary_learning run's trainer_N, else the folder itself. What saescope writes for
    the SAE (its index, its density plot) goes there, so SAEs of one run never share it."""
    fmt = interop.detect(path)
    if fmt == "sparsify":
        return sparsify.coder_folder(path, hook)
    if fmt == "dictionary_learning":
        return dictionary_learning.resolve(path, hook)
    return Path(path)


def peer_spec(
    path: str | Path,
    model: str | Path | None = None,
    hook: str | None = None,
    target: str | None = None,
) -> tuple[DataSpec, dict[str, Any]]:
    """A peer SAE folder's data (`peer_data`) and what its metadata says, read without loading
    the SAE or the model: what `Run.open` checks first."""
    meta = interop.metadata(path, hook)
    return peer_data(path, meta, model, hook, target), meta

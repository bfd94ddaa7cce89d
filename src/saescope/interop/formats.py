"""The registry of SAE file formats: each one's cheap test, loader, writer and metadata reader.

    FORMATS["saelens"].load(path, device="cpu", hook=None) -> SAE
    save(sae, path, format="saelens", metadata=None) -> Path

`detect` (detect.py) tries the formats in this order; `convert` (convert.py) loads any of
them and writes another. saescope's own format is first: its cfg.json has the same two file
names as SAELens's, told apart by `format_version`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saescope.errors import FormatError
from saescope.interop.dictionary_learning import (
    is_dictionary_learning,
    load_dictionary_learning,
    metadata_dictionary_learning,
    save_dictionary_learning,
)
from saescope.interop.saelens import is_saelens, load_saelens, metadata_saelens
from saescope.interop.saelens_write import save_saelens
from saescope.interop.sparsify import is_sparsify, load_sparsify, metadata_sparsify, save_sparsify
from saescope.saes import SAE, io


@dataclass(frozen=True)
class Format:
    """One file format: `is_(path)` (file names / JSON keys only), `load(path, device, hook)`,
    `save(sae, path, metadata)`, `metadata(path, hook)` (model_name, hook_name, ...)."""

    is_: Callable[[Path], bool]
    load: Callable[..., SAE]
    save: Callable[..., Path]
    metadata: Callable[..., dict[str, Any]]
    looks_for: str
    """What `detect` says it looked for."""


# ----- saescope's own format (saes/io.py) -------------------------------------------------------

DATA_KEYS = {
    "model": "model_name",
    "hook": "hook_name",
    "target": "hook_name_out",
    "context": "context_size",
}
"""A run's DataSpec field -> the interop metadata key."""
INTEROP_KEYS = (
    "model_name",
    "hook_name",
    "hook_name_out",
    "context_size",
    "reshape_activations",
    "hook_head_index",
    "prepend_bos",
)
"""Interop metadata a saescope folder keeps as it is (what a converted SAE came with)."""


def is_saescope(path: str | Path) -> bool:
    """Whether `path` holds saescope's two files with a cfg.json that has `format_version`."""
    path = Path(path)
    if not ((path / io.CFG_FILE).is_file() and (path / io.WEIGHTS_FILE).is_file()):
        return False
    try:
        cfg = json.loads((path / io.CFG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return False
    return isinstance(cfg, dict) and "format_version" in cfg


def load_saescope(path: str | Path, device: str | torch.device = "cpu", hook: Any = None) -> SAE:
    """saescope's own folder (`SAE.load`); `hook` is accepted for the common interface."""
    del hook
    return SAE.load(path, device)


def metadata_saescope(path: str | Path, hook: Any = None) -> dict[str, Any]:
    """Where a saescope SAE belongs: model_name, hook_name, hook_name_out and context_size from
    the run's recorded data (metadata.data), or as a converted folder recorded them."""
    del hook
    meta = io.read_cfg(path).get("metadata") or {}
    out = {k: meta[k] for k in INTEROP_KEYS if meta.get(k) is not None}
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    for field, key in DATA_KEYS.items():
        if data.get(field) is not None:
            out.setdefault(key, data[field])
    return out


def save_saescope(sae: SAE, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """saescope's own folder; `metadata` is kept as it is (a run's, or interop keys)."""
    return sae.save(path, metadata)


# ----- the registry ------------------------------------------------------------------------------

FORMATS: dict[str, Format] = {
    "saescope": Format(
        is_saescope,
        load_saescope,
        save_saescope,
        metadata_saescope,
        f"saescope ({io.CFG_FILE} with format_version + {io.WEIGHTS_FILE})",
    ),
    "saelens": Format(
        is_saelens,
        load_saelens,
        save_saelens,
        metadata_saelens,
        "SAELens (cfg.json + sae_weights.safetensors)",
    ),
    "sparsify": Format(
        is_sparsify,
        load_sparsify,
        save_sparsify,
        metadata_sparsify,
        "sparsify (cfg.json + sae.safetensors, or a run's folders of them)",
    ),
    "dictionary_learning": Format(
        is_dictionary_learning,
        load_dictionary_learning,
        save_dictionary_learning,
        metadata_dictionary_learning,
        "dictionary_learning (ae.pt + config.json, or a run's trainer_N folders)",
    ),
    # `detect` tries them in this order; `make interop-check` picks every one up from here.
}
"""Every format saescope reads and writes, by name, in the order `detect` tries them."""


def get_format(name: str) -> Format:
    """The format called `name`; a one-line FormatError listing the known ones."""
    if name not in FORMATS:
        raise FormatError(f"unknown format {name!r}; saescope writes {', '.join(FORMATS)}")
    return FORMATS[name]


def save(
    sae: SAE, path: str | Path, format: str = "saescope", metadata: dict[str, Any] | None = None
) -> Path:
    """Write `sae` at `path` in `format` (atomic writes); a one-line FormatError when the
    format cannot express it, or when `path` holds an SAE in another format."""
    fmt = get_format(format)
    held = next((n for n, f in FORMATS.items() if Path(path).is_dir() and f.is_(Path(path))), None)
    if held not in (None, format):  # its files would stay, and `detect` could pick them
        raise FormatError(
            f"{path} already holds a {held} SAE, whose files would stay beside the {format} "
            "ones (and could be what loads); write to an empty folder or delete it first"
        )
    return fmt.save(sae, path, metadata)

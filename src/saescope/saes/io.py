"""The file format: a folder with `cfg.json` and `sae_weights.safetensors`.

Tensor names and shapes follow SAELens (W_enc (d_in, d_sae), b_enc, W_dec (d_sae, d_out), b_dec;
`threshold` for jumprelu and batchtopk; b_gate, b_mag, r_mag for gated) and so does the
`architecture` key. Loading never unpickles. Writes are atomic: temp file, fsync, rename.

This module reads and writes the two files; it knows no SAE class (`SAE.load` and `SAE.save`
in `base.py` build on it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from saescope.atomic import atomic_save_tensors, atomic_write_bytes
from saescope.errors import FormatError
from saescope.version import __version__

FORMAT_VERSION = 1
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
REQUIRED_KEYS = ("format_version", "architecture", "d_in", "d_sae")
FILE_KEYS = ("format_version", "saescope_version", "dtype", "normalize_activations", "metadata")
"""Keys of cfg.json that describe the file, not the SAE's config."""


def is_saved(path: str | Path) -> bool:
    """Whether `path` is a folder holding a saved SAE."""
    return (Path(path) / CFG_FILE).is_file()


def write(
    path: str | Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], metadata: dict
) -> Path:
    """Write an SAE folder: weights first, then cfg.json (config + file keys), each atomically,
    so a folder with a cfg.json always has the weights it describes."""
    path = Path(path)
    tensors = {k: v.detach().cpu() for k, v in tensors.items()}
    dtype = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    cfg = {
        "format_version": FORMAT_VERSION,
        "saescope_version": __version__,
        **config,
        "dtype": dtype,
        "normalize_activations": "none",
        "metadata": metadata,
    }
    atomic_save_tensors(path / WEIGHTS_FILE, tensors, {"format": "pt"})
    atomic_write_bytes(path / CFG_FILE, json.dumps(cfg, indent=2).encode())
    return path


def read_json_object(file: Path, fix: str) -> dict[str, Any]:
    """A JSON file holding an object (any library's cfg.json or config.json); a one-line
    FormatError ending in `fix` when it is not valid JSON or not an object."""
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise FormatError(f"{file} is not valid JSON ({e}); {fix}") from None
    if not isinstance(data, dict):
        raise FormatError(f"{file} must hold a JSON object; {fix}")
    return data


def read_cfg(path: str | Path) -> dict[str, Any]:
    """Read and check a saved SAE's cfg.json."""
    file = Path(path) / CFG_FILE
    if not file.is_file():
        raise FormatError(f"{file} not found: point at a folder written by saescope save/train")
    cfg = read_json_object(file, "re-save the SAE")
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise FormatError(f"{file} lacks keys {missing}; re-save the SAE with saescope")
    version = cfg["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FormatError(
            f"{file} has format_version {version!r}, newer than this saescope reads "
            f"({FORMAT_VERSION}); upgrade saescope"
        )
    return cfg


def config_part(cfg: dict[str, Any]) -> dict[str, Any]:
    """The SAE's config in a cfg.json: everything but the file's own keys."""
    return {k: v for k, v in cfg.items() if k not in FILE_KEYS}


def read_weights(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a saved SAE (safetensors: nothing is unpickled)."""
    file = Path(path) / WEIGHTS_FILE
    if not file.is_file():
        raise FormatError(f"{file} not found; the save is incomplete, re-save the SAE")
    try:
        return load_file(file, device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FormatError(f"{file} is truncated or corrupt ({msg}); re-save the SAE") from None


def weight_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape in a saved SAE's weights file, read from its header alone."""
    file = Path(path) / WEIGHTS_FILE
    if not file.is_file():
        raise FormatError(f"{file} not found; the save is incomplete, re-save the SAE")
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FormatError(f"{file} is truncated or corrupt ({msg}); re-save the SAE") from None


SHAPE_FIELDS = {"d_in": ("W_enc", 0), "d_sae": ("W_dec", 0), "d_out": ("W_dec", 1)}
"""Which weight and axis each size of cfg.json must match."""


def check_sizes(path: str | Path, cfg: dict[str, Any]) -> None:
    """cfg.json's d_in, d_sae and d_out against the weights' shapes: a mismatch names the
    field, the value cfg.json gives and the one the weights have."""
    shapes = weight_shapes(path)
    for key, (tensor, axis) in SHAPE_FIELDS.items():
        shape = shapes.get(tensor)
        if key not in cfg or shape is None or len(shape) != 2:
            continue
        if cfg[key] != shape[axis]:
            raise FormatError(
                f"{Path(path) / CFG_FILE}: {key} is {cfg[key]} but {WEIGHTS_FILE} has "
                f"{tensor} of shape {shape}, i.e. {key}={shape[axis]}; set {key} to "
                f"{shape[axis]} in cfg.json or re-save the SAE"
            )


def tensor_mismatch(
    path: str | Path,
    arch: str,
    expected: dict[str, tuple[int, ...]],
    got: dict[str, tuple[int, ...]],
) -> str:
    """One line naming the first tensor of the SAE folder at path (of architecture `arch`)
    that is missing, extra or of another shape."""
    file = Path(path) / WEIGHTS_FILE
    for name in sorted(expected.keys() | got.keys()):
        want, have = expected.get(name), got.get(name)
        if want == have:
            continue
        if have is None:
            found = "is missing"
        elif want is None:
            found = "is not a tensor of this architecture"
        else:
            found = f"has shape {have}, expected {want}"
        return f"{file}: tensor {name!r} {found} for its {arch} config; re-save the SAE"
    return f"{file} does not match its {arch} config; re-save the SAE"

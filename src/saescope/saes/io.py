"""The file format: a folder with `cfg.json` and `sae_weights.safetensors`.

Tensor names and shapes follow SAELens (W_enc (d_in, d_sae), b_enc, W_dec (d_sae, d_out), b_dec;
`threshold` for jumprelu and batchtopk; b_gate, b_mag, r_mag for gated) and so does the
`architecture` key. Loading never unpickles. Writes are atomic: temp file, fsync, rename.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from saescope.atomic import atomic_save_tensors, atomic_write_bytes
from saescope.errors import ConfigError, FormatError
from saescope.saes.base import SAE, SAEConfig

FORMAT_VERSION = 1
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
REQUIRED_KEYS = ("format_version", "architecture", "d_in", "d_sae")


def _architectures() -> dict[str, type[SAE]]:
    from saescope.saes import ARCHITECTURES

    return ARCHITECTURES


def architecture(name: str) -> type[SAE]:
    """The SAE class registered under `name`."""
    archs = _architectures()
    if name not in archs:
        raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(archs)}")
    return archs[name]


def config_from_dict(d: dict[str, Any]) -> SAEConfig:
    """Build an architecture's config from a dict with an `architecture` key; keys that are
    not fields of that config are ignored (they are metadata)."""
    cls = architecture(str(d.get("architecture")))
    names = {f.name for f in dataclasses.fields(cls.config_cls)}
    return cls.config_cls(**{k: v for k, v in d.items() if k in names})


def make_sae(cfg: SAEConfig | dict[str, Any]) -> SAE:
    """A freshly initialised SAE for a config (or a dict with an `architecture` key)."""
    if isinstance(cfg, dict):
        cfg = config_from_dict(cfg)
    return architecture(cfg.name)(cfg)


def save(sae: SAE, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Save an SAE as a folder: weights first, then cfg.json, each atomically."""
    from saescope import __version__

    path = Path(path)
    tensors = {k: v.detach().cpu() for k, v in sae.to_file_tensors().items()}
    dtype = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    cfg = {
        "format_version": FORMAT_VERSION,
        "saescope_version": __version__,
        **sae.cfg.to_dict(),
        "dtype": dtype,
        "normalize_activations": "none",
        "metadata": metadata or {},
    }
    atomic_save_tensors(path / WEIGHTS_FILE, tensors, {"format": "pt"})
    atomic_write_bytes(path / CFG_FILE, json.dumps(cfg, indent=2).encode())
    return path


def read_cfg(path: str | Path) -> dict[str, Any]:
    """Read and check a saved SAE's cfg.json."""
    file = Path(path) / CFG_FILE
    if not file.is_file():
        raise FormatError(f"{file} not found: point at a folder written by saescope save/train")
    try:
        cfg = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{file} is not valid JSON ({e}); re-save the SAE") from None
    if not isinstance(cfg, dict):
        raise FormatError(f"{file} must hold a JSON object; re-save the SAE")
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


def load(path: str | Path, device: str | torch.device = "cpu") -> SAE:
    """Load a saved SAE (in eval mode). Never unpickles: JSON + safetensors only."""
    path = Path(path)
    cfg = read_cfg(path)
    sae = make_sae(cfg)
    file = path / WEIGHTS_FILE
    if not file.is_file():
        raise FormatError(f"{file} not found; the save is incomplete, re-save the SAE")
    try:
        tensors = load_file(file, device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FormatError(f"{file} is truncated or corrupt ({msg}); re-save the SAE") from None
    state = sae.from_file_tensors(tensors)
    expected = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        diff = sorted(set(expected.items()) ^ set(got.items()))
        raise FormatError(f"{file} does not match {cfg['architecture']} {cfg}: tensors {diff}")
    sae.load_state_dict(state)
    return sae.to(device).eval()

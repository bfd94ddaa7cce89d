"""One shard of the activation cache on disk: a safetensors file read without unpickling, and
the dtypes a cache may store its activations in.

A cache stores its hook tensors as float32 (the default), bfloat16 or float16 (`harvest
--dtype`); tokens, positions and contexts are int64 whatever the dtype. bfloat16 keeps
float32's range with 8 significant bits (relative rounding <= 2^-8); float16 keeps 11
(2^-11) but tops out at 65504, so a value beyond it is refused rather than stored as an
infinity. Readers get float32 back (`as_float`).
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saescope.errors import ConfigError, FormatError, InputError

MANIFEST = "manifest.json"
FORMAT = "saescope-activations"
VERSION = 1

CACHE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
"""What a cache may store its activations as (`--dtype`), by name."""

FLOAT16_MAX = float(torch.finfo(torch.float16).max)  # 65504

# safetensors dtype -> (numpy dtype of the bytes, torch dtype they hold); numpy has no
# bfloat16, so its bytes are read as uint16 and viewed as bfloat16 by torch
_DTYPES: dict[str, tuple[type, torch.dtype]] = {
    "F32": (np.float32, torch.float32),
    "F16": (np.float16, torch.float16),
    "BF16": (np.uint16, torch.bfloat16),
    "I64": (np.int64, torch.int64),
    "I32": (np.int32, torch.int32),
}


def cache_dtype(name: str) -> torch.dtype:
    """The torch dtype of a `--dtype` name, else a one-line error listing the choices."""
    if name not in CACHE_DTYPES:
        raise ConfigError(
            f"--dtype {name!r} is not a cache dtype; use one of {', '.join(CACHE_DTYPES)}"
        )
    return CACHE_DTYPES[name]


def to_stored(hook: str, v: Tensor, dtype: torch.dtype) -> Tensor:
    """A hook's rows in the cache's dtype (converted where they are, e.g. on the GPU before
    the copy to the host); float16 refuses a value beyond its range, naming the hook."""
    if dtype == torch.float16 and v.numel():
        top = float(v.detach().abs().max())
        if top > FLOAT16_MAX:
            raise InputError(
                f"hook {hook}: activations reach |x| = {top:.6g}, beyond float16's largest "
                f"value {FLOAT16_MAX:.0f}; harvest with --dtype bfloat16 (float32's range)"
            )
    return v.detach().to(dtype)


def as_float(t: Tensor) -> Tensor:
    """Rows of any stored dtype as float32 (float32 rows themselves, not a copy)."""
    return t.float()


@dataclass(frozen=True)
class Entry:
    """Where one tensor sits inside a safetensors file."""

    dtype: np.dtype
    """The numpy dtype of its bytes (uint16 for bfloat16)."""
    torch_dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # bytes from the start of the file

    def tensor(self, array: np.ndarray) -> Tensor:
        """An array of this entry's bytes as a tensor of its dtype (no copy; a read-only map
        gives a tensor not to be written to)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            t = torch.from_numpy(array)
        return t.view(self.torch_dtype) if t.dtype != self.torch_dtype else t


def header(path: Path) -> dict[str, Entry]:
    """The tensors of a safetensors file: 8-byte little-endian header size, JSON header."""
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > os.fstat(fh.fileno()).st_size:  # torn: never allocate what is not there
                raise ValueError(f"header of {size} bytes in a shorter file")
            info_all = json.loads(fh.read(size))
    except (OSError, struct.error, ValueError) as e:
        raise FormatError(f"{path}: missing or unreadable shard ({e}); harvest again") from None
    out = {}
    for name, info in info_all.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise FormatError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        np_dtype, torch_dtype = _DTYPES[info["dtype"]]
        offset = 8 + size + info["data_offsets"][0]
        out[name] = Entry(np.dtype(np_dtype), torch_dtype, tuple(info["shape"]), offset)
    return out


def check_shards(path: Path, shards: list[dict[str, Any]]) -> None:
    missing = [s["file"] for s in shards if not (path / s["file"]).is_file()]
    if missing:
        raise FormatError(
            f"{path}: shard {missing[0]} of the manifest is missing ({len(missing)} in all); "
            "harvest again into a new folder"
        )


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        m = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FormatError(f"{path / MANIFEST}: not a readable manifest ({e})") from None
    if m.get("format") != FORMAT or m.get("version") != VERSION:
        raise FormatError(f"{path}: not a saescope activation cache (format {m.get('format')})")
    return m

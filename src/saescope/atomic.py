"""Atomic writes: a reader sees a file's old or new content, never a mix (temp file in the same
folder, fsync, rename)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import torch
from safetensors.torch import save_file


def _temp_name(path: Path) -> Path:
    """A fresh temp file name beside `path` (same folder, so the rename never crosses disks);
    files made there get the usual permissions (0666 less the umask, as open() gives)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so a reader sees the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """safetensors `save_file` to a temp file, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    mode = os.fstat(fd).st_mode  # what a new file gets here (safetensors writes 0600)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

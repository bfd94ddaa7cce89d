"""Activations stored in a file: `.npy` (N, d_in), or `.safetensors` with one tensor, or with
`x` (N, d_in) and `y` (N, d_out) for a transcoder. `.npy` files are memory-mapped."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from saescope.data.stream import IndexedBatches
from saescope.errors import ConfigError, InputError

SUFFIXES = (".npy", ".safetensors")


Rows = np.ndarray | Tensor  # a memory-mapped array or an in-memory tensor, (N, d)


def _as_2d(name: str, t: Rows, path: Path) -> Rows:
    floating = (
        t.is_floating_point() if isinstance(t, Tensor) else np.issubdtype(t.dtype, np.floating)
    )
    if t.ndim != 2 or t.shape[0] == 0:
        raise InputError(f"{path}: {name} has shape {tuple(t.shape)}; expected (N, d) with N >= 1")
    if not floating:
        raise InputError(f"{path}: {name} has dtype {t.dtype}; expected floating point activations")
    return t


def take(rows: Rows, idx: Tensor | None = None) -> Tensor:
    """Rows `idx` (all when None) as a float32 tensor; reads only those rows of a memmap."""
    if isinstance(rows, Tensor):
        out = rows if idx is None else rows[idx]
        return out.float()
    picked = rows if idx is None else rows[idx.numpy()]
    return torch.from_numpy(np.array(picked, dtype=np.float32))


def read_activations(path: str | Path) -> tuple[Rows, Rows | None]:
    """x (N, d_in) and y (N, d_out) or None. Raises InputError with the fix on bad files."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise InputError(f"{path}: unsupported file type; use .npy or .safetensors of shape (N, d)")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise InputError(f"{path}: not a readable .npy array ({e})") from None
        return _as_2d("array", arr, path), None
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as e:
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None
    if "x" in tensors:
        x = _as_2d("x", tensors["x"], path)
        y = _as_2d("y", tensors["y"], path) if "y" in tensors else None
        if y is not None and y.shape[0] != x.shape[0]:
            raise InputError(f"{path}: x has {x.shape[0]} rows but y has {y.shape[0]}")
        return x, y
    if len(tensors) != 1:
        raise InputError(f"{path}: holds {sorted(tensors)}; expected one tensor, or 'x' (and 'y')")
    ((name, t),) = tensors.items()
    return _as_2d(name, t, path), None


class ActivationFile(IndexedBatches):
    """Shuffled batches from an activation file, epoch after epoch. Batch i depends only on
    (seed, i), so a stream can restart anywhere (`iter_from`)."""

    def __init__(self, path: str | Path, batch_size: int = 1024, seed: int = 0) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.path = Path(path)
        self.x, self.y = read_activations(path)
        self.batch_size = min(batch_size, self.x.shape[0])
        self.seed = seed
        self.per_epoch = self.x.shape[0] // self.batch_size

    @property
    def d_in(self) -> int:
        return self.x.shape[1]

    @property
    def d_out(self) -> int:
        return self.d_in if self.y is None else self.y.shape[1]

    @property
    def y_is_x(self) -> bool:
        return self.y is None

    @functools.lru_cache(maxsize=2)  # noqa: B019 - a few permutations, freed with the object
    def _perm(self, epoch: int) -> Tensor:
        return torch.randperm(self.x.shape[0], generator=self.generator(epoch))

    def batch(self, i: int) -> tuple[Tensor, Tensor]:
        return self.part(i, 0, self.batch_size)

    def part(self, i: int, lo: int, hi: int) -> tuple[Tensor, Tensor]:
        """Rows [lo, hi) of batch i; a memmap reads only those."""
        epoch, j = divmod(i, self.per_epoch)
        idx = self._perm(epoch)[j * self.batch_size : (j + 1) * self.batch_size].sort().values
        x = take(self.x, idx[lo:hi])
        return x, (x if self.y is None else take(self.y, idx[lo:hi]))

    def head(self, n: int) -> tuple[Tensor, Tensor]:
        """The first n rows (all when fewer), unshuffled, for evaluation; a memmap reads only
        those."""
        idx = torch.arange(min(n, self.x.shape[0]))
        x = take(self.x, idx)
        return x, (x if self.y is None else take(self.y, idx))

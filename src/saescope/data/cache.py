"""An activation cache on disk: sharded safetensors files plus a manifest.

    CACHE/manifest.json            what was harvested (model, hooks, context, text) and the
                                   list of complete shards, rewritten atomically after each
    CACHE/shard-000000.safetensors one tensor per hook point (rows, d) float32, plus "tokens",
                                   "positions" and "contexts" (rows,) int64

A shard is written to a temp file, fsynced and renamed, and only then listed in the manifest,
so a reader never sees a half-written shard and a killed harvest resumes after the last listed
one (a file the manifest does not list is overwritten). Growing a cache is the same as resuming
it: ask for more tokens.

Reading: `ActivationCache.rows` memory-maps one shard's tensor (the safetensors header gives
its offset; nothing is unpickled). `CacheBatches` is the shuffling reader for training: each
epoch permutes fixed-size chunks of rows across all shards, reads a window of chunks (about
`buffer_mb` of rows) into memory at a time and draws each batch through a permutation of
the rows inside it, so memory is bounded by two windows whatever the cache's size; batch i
is a pure function of (seed, i), so training resumes anywhere.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saescope.atomic import atomic_save_tensors, atomic_write_bytes
from saescope.data.stream import IndexedBatches
from saescope.errors import ConfigError, FormatError, InputError

MANIFEST = "manifest.json"
FORMAT = "saescope-activations"
VERSION = 1
META_KEYS = ("tokens", "positions", "contexts")
_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def is_cache(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _shard_name(i: int) -> str:
    return f"shard-{i:06d}.safetensors"


class CacheWriter:
    """Appends harvested batches to a cache, one shard per `shard_contexts` contexts.

    `source` describes what is harvested (model, hooks, context length, text fingerprint); an
    existing cache must match it, so a resumed or grown cache never mixes two sources.
    """

    def __init__(self, path: str | Path, source: dict[str, Any], shard_contexts: int = 256):
        if shard_contexts < 1:
            raise ConfigError(f"shard_contexts must be >= 1, got {shard_contexts}")
        self.path = Path(path)
        self.source = json.loads(json.dumps(source))  # as it reads back from JSON
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"{self.path} is a file; give a folder for the cache")
        if self.path.is_dir():  # writes a kill interrupted: never listed, so never read
            for leftover in self.path.glob(".*.tmp"):
                leftover.unlink(missing_ok=True)
        if is_cache(self.path):
            self.manifest = _read_manifest(self.path)
            if self.manifest["source"] != self.source:
                raise ConfigError(
                    f"{self.path} holds a cache of {_describe(self.manifest['source'])}, not "
                    f"{_describe(self.source)}; give a new --out folder or the same options"
                )
            _check_shards(self.path, self.manifest["shards"])
        else:
            others = [p for p in self.path.glob("*") if not _SHARD.fullmatch(p.name)]
            if others:
                raise ConfigError(
                    f"{self.path} holds files and is not an activation cache; use a new folder"
                )
            self.manifest = {
                "format": FORMAT,
                "version": VERSION,
                "source": self.source,
                "shard_contexts": shard_contexts,
                "hooks": {},
                "shards": [],
            }
        self.shard_contexts = int(self.manifest["shard_contexts"])
        self._parts: list[dict[str, Tensor]] = []
        self._pending = 0

    @property
    def contexts_done(self) -> int:
        """Contexts safely on disk (a resumed harvest starts at this context)."""
        return sum(s["n_contexts"] for s in self.manifest["shards"])

    @property
    def rows(self) -> int:
        return sum(s["rows"] for s in self.manifest["shards"])

    def add(self, batch: dict[str, Tensor], n_contexts: int) -> None:
        """One harvested batch of `n_contexts` whole contexts: {hook: (n, d), tokens,
        positions, contexts}. Shards are written as soon as they fill."""
        self._parts.append({k: v.detach().cpu() for k, v in batch.items()})
        self._pending += n_contexts
        if self._pending >= self.shard_contexts:
            self.flush()

    def flush(self) -> None:
        """Write what is pending as one shard, then list it in the manifest."""
        if not self._parts:
            return
        tensors = {k: torch.cat([p[k] for p in self._parts]) for k in self._parts[0]}
        for k in META_KEYS:
            tensors[k] = tensors[k].long()
        hooks = {k: int(v.shape[1]) for k, v in tensors.items() if k not in META_KEYS}
        tensors = {k: (v if k in META_KEYS else v.float()) for k, v in tensors.items()}
        if self.manifest["hooks"] and self.manifest["hooks"] != hooks:
            raise InputError(f"batch holds hooks {hooks}, the cache {self.manifest['hooks']}")
        name = _shard_name(len(self.manifest["shards"]))
        atomic_save_tensors(self.path / name, tensors, {"format": "pt"})
        self.manifest["hooks"] = hooks
        rows = int(tensors["tokens"].shape[0])
        self.manifest["shards"].append({"file": name, "rows": rows, "n_contexts": self._pending})
        self._write_manifest()
        self._parts, self._pending = [], 0

    def _write_manifest(self) -> None:
        text = json.dumps(self.manifest, indent=1).encode()
        atomic_write_bytes(self.path / MANIFEST, text)


_SHARD = re.compile(r"shard-\d{6}\.safetensors")  # unlisted ones a kill left: overwritten


def _check_shards(path: Path, shards: list[dict[str, Any]]) -> None:
    missing = [s["file"] for s in shards if not (path / s["file"]).is_file()]
    if missing:
        raise FormatError(
            f"{path}: shard {missing[0]} of the manifest is missing ({len(missing)} in all); "
            "harvest again into a new folder"
        )


def _describe(source: dict[str, Any]) -> str:
    keys = ("model", "hooks", "context")
    return ", ".join(f"{k}={source.get(k)}" for k in keys if k in source) or str(source)


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        m = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FormatError(f"{path / MANIFEST}: not a readable manifest ({e})") from None
    if m.get("format") != FORMAT or m.get("version") != VERSION:
        raise FormatError(f"{path}: not a saescope activation cache (format {m.get('format')})")
    return m


@dataclass(frozen=True)
class _Entry:
    """Where one tensor sits inside a safetensors file."""

    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # bytes from the start of the file


def _header(path: Path) -> dict[str, _Entry]:
    """The tensors of a safetensors file: 8-byte little-endian header size, JSON header."""
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > os.fstat(fh.fileno()).st_size:  # torn: never allocate what is not there
                raise ValueError(f"header of {size} bytes in a shorter file")
            header = json.loads(fh.read(size))
    except (OSError, struct.error, ValueError) as e:
        raise FormatError(f"{path}: missing or unreadable shard ({e}); harvest again") from None
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise FormatError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        out[name] = _Entry(
            np.dtype(_DTYPES[info["dtype"]]),
            tuple(info["shape"]),
            8 + size + info["data_offsets"][0],
        )
    return out


class ActivationCache:
    """A finished or growing cache, read through its manifest (complete shards only)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not is_cache(self.path):
            raise InputError(f"{self.path}: no {MANIFEST}; harvest one with `saescope harvest`")
        self.manifest = _read_manifest(self.path)
        self.shards = self.manifest["shards"]
        if not self.shards:
            raise InputError(f"{self.path}: the cache has no complete shard yet")
        self.hooks: dict[str, int] = self.manifest["hooks"]
        self.source: dict[str, Any] = self.manifest["source"]
        _check_shards(self.path, self.shards)
        self.shard_rows = [int(s["rows"]) for s in self.shards]
        self.n_rows = sum(self.shard_rows)
        self.n_contexts = sum(int(s["n_contexts"]) for s in self.shards)
        self._headers: dict[int, dict[str, _Entry]] = {}

    def d(self, hook: str) -> int:
        self.check_hook(hook)
        return self.hooks[hook]

    def check_hook(self, hook: str) -> None:
        if hook not in self.hooks:
            raise ConfigError(
                f"hook {hook!r} is not in the cache {self.path}; it holds {', '.join(self.hooks)}"
            )

    def _entry(self, shard: int, name: str) -> _Entry:
        if shard not in self._headers:
            path = self.path / self.shards[shard]["file"]
            header = _header(path)
            rows = {e.shape[0] for e in header.values()}
            if rows != {self.shard_rows[shard]}:
                raise FormatError(
                    f"{path}: holds {sorted(rows)} rows, the manifest says "
                    f"{self.shard_rows[shard]}; harvest again into a new folder"
                )
            self._headers[shard] = header
        return self._headers[shard][name]

    def rows(self, name: str, shard: int) -> np.memmap:
        """Tensor `name` (a hook, or tokens/positions/contexts) of one shard, memory-mapped."""
        e = self._entry(shard, name)
        path = self.path / self.shards[shard]["file"]
        return np.memmap(path, dtype=e.dtype, mode="r", offset=e.offset, shape=e.shape)

    def read(
        self, name: str, shard: int, start: int, stop: int, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Rows [start, stop) of one shard's tensor, read into private memory (no mapping
        stays behind, so the process's memory does not grow with the pages read); into `out`
        (C-contiguous, the tensor's dtype) when given."""
        e = self._entry(shard, name)
        if out is None:
            out = np.empty((stop - start, *e.shape[1:]), dtype=e.dtype)
        path = self.path / self.shards[shard]["file"]
        with open(path, "rb") as fh:
            fh.seek(e.offset + start * out[:1].nbytes)
            got = fh.readinto(memoryview(out).cast("B"))
        if got != out.nbytes:
            raise FormatError(f"{path}: truncated ({got} of {out.nbytes} bytes); harvest again")
        return out

    def head(self, name: str, n: int) -> Tensor:
        """The first n rows of a tensor across shards, in order."""
        if name not in META_KEYS:
            self.check_hook(name)
        parts, left = [], n
        for i, rows in enumerate(self.shard_rows):
            if left <= 0:
                break
            take = min(rows, left)
            parts.append(torch.from_numpy(self.read(name, i, 0, take)))
            left -= take
        return torch.cat(parts)


class CacheBatches(IndexedBatches):
    """Shuffled (x, y) batches from a cache, epoch after epoch, with bounded memory.

    x_hook and y_hook (a transcoder's target; None: y = x) name tensors of the cache. Rows are
    cut into chunks of `chunk_rows`; each epoch permutes the chunks, groups consecutive ones
    into windows of about `buffer_mb` megabytes, and permutes rows within each window.
    """

    def __init__(
        self,
        cache: ActivationCache | str | Path,
        x_hook: str,
        y_hook: str | None = None,
        batch_size: int = 4096,
        seed: int = 0,
        buffer_mb: float = 128,
        chunk_rows: int = 4096,
    ) -> None:
        self.cache = cache if isinstance(cache, ActivationCache) else ActivationCache(cache)
        self.cache.check_hook(x_hook)
        if y_hook is not None:
            self.cache.check_hook(y_hook)
        if batch_size < 1 or chunk_rows < 1:
            raise ConfigError(f"batch_size and chunk_rows must be >= 1: {batch_size}, {chunk_rows}")
        self.x_hook, self.y_hook, self.seed = x_hook, y_hook, seed
        self.batch_size = min(batch_size, self.cache.n_rows)
        self.per_epoch = self.cache.n_rows // self.batch_size
        self.chunks = [
            (s, a, min(a + chunk_rows, rows))
            for s, rows in enumerate(self.cache.shard_rows)
            for a in range(0, rows, chunk_rows)
        ]
        row_bytes = 4 * (self.d_in + (self.d_out if y_hook else 0))
        self.window_rows = max(batch_size, int(buffer_mb * 2**20 / row_bytes))
        self._windows: OrderedDict[tuple[int, int], tuple[Tensor, Tensor | None, Tensor]] = (
            OrderedDict()
        )
        self._plans: OrderedDict[int, tuple[list[list[int]], list[int]]] = OrderedDict()

    @property
    def d_in(self) -> int:
        return self.cache.d(self.x_hook)

    @property
    def d_out(self) -> int:
        return self.cache.d(self.y_hook) if self.y_hook else self.d_in

    @property
    def y_is_x(self) -> bool:
        return self.y_hook is None

    def _plan(self, epoch: int) -> tuple[list[list[int]], list[int]]:
        """The epoch's windows (lists of chunk indices) and each window's first row."""
        if epoch not in self._plans:
            order = torch.randperm(len(self.chunks), generator=self.generator(epoch)).tolist()
            windows: list[list[int]] = [[]]
            starts, filled, total = [0], 0, 0
            for c in order:
                if filled >= self.window_rows:
                    windows.append([])
                    starts.append(total)
                    filled = 0
                n = self.chunks[c][2] - self.chunks[c][1]
                windows[-1].append(c)
                filled += n
                total += n
            self._plans[epoch] = (windows, starts)
            if len(self._plans) > 2:
                self._plans.popitem(last=False)
        return self._plans[epoch]

    def _load(self, name: str, chunk_ids: Sequence[int]) -> Tensor:
        """The chunks' rows, read one after another into one array."""
        sizes = [self.chunks[c][2] - self.chunks[c][1] for c in chunk_ids]
        out = np.empty((sum(sizes), self.cache.d(name)), dtype=np.float32)
        at = 0
        for c, n in zip(chunk_ids, sizes, strict=True):
            self.cache.read(name, *self.chunks[c], out=out[at : at + n])
            at += n
        return torch.from_numpy(out)

    def _window(self, epoch: int, w: int) -> tuple[Tensor, Tensor | None, Tensor]:
        """Window w of an epoch: its rows (x, y) in chunk order and their permutation."""
        key = (epoch, w)
        if key not in self._windows:
            while len(self._windows) >= 2:  # room first: never more than two windows held
                self._windows.popitem(last=False)
            chunk_ids = self._plan(epoch)[0][w]
            x = self._load(self.x_hook, chunk_ids)
            y = self._load(self.y_hook, chunk_ids) if self.y_hook else None
            mixed = ((self.seed * 1_000_003 + epoch) * 1_000_003 + w) % 2**63
            gen = torch.Generator().manual_seed(mixed)
            self._windows[key] = (x, y, torch.randperm(x.shape[0], generator=gen))
        return self._windows[key]

    def batch(self, i: int) -> tuple[Tensor, Tensor]:
        return self.part(i, 0, self.batch_size)

    def part(self, i: int, lo: int, hi: int) -> tuple[Tensor, Tensor]:
        """Rows [lo, hi) of batch i: only the windows that hold them are read."""
        epoch, j = divmod(i, self.per_epoch)
        starts = self._plan(epoch)[1]
        lo, hi = j * self.batch_size + lo, j * self.batch_size + min(hi, self.batch_size)
        xs, ys = [], []
        w = bisect.bisect_right(starts, lo) - 1
        while lo < hi:
            x, y, perm = self._window(epoch, w)
            a = lo - starts[w]
            b = min(hi - starts[w], x.shape[0])
            idx = perm[a:b]
            xs.append(x[idx])
            ys.append(y[idx] if y is not None else None)
            lo += b - a
            w += 1
        x = xs[0] if len(xs) == 1 else torch.cat(xs)
        if self.y_hook is None:
            return x, x
        y = ys[0] if len(ys) == 1 else torch.cat(ys)  # type: ignore[arg-type]
        return x, y

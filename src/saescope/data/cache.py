"""An activation cache on disk: sharded safetensors files plus a manifest.

    CACHE/manifest.json            what was harvested (model, hooks, context, text) and the
                                   list of complete shards, rewritten atomically after each
    CACHE/shard-000000.safetensors one tensor per hook point (rows, d) in the cache's dtype
                                   (float32, bfloat16 or float16: `dtype` in the manifest,
                                   float32 when absent), plus "tokens", "positions" and
                                   "contexts" (rows,) int64

A shard is written to a temp file, fsynced and renamed, and only then listed in the manifest,
so a reader never sees a half-written shard and a killed harvest resumes after the last listed
one (a file the manifest does not list is overwritten). Growing a cache is the same as resuming
it: ask for more tokens.

Reading: `ActivationCache.rows` memory-maps one shard's tensor (the safetensors header gives
its offset; nothing is unpickled). `CacheBatches` is the shuffling reader for training: each
epoch permutes fixed-size chunks of rows across all shards, reads a window of chunks (about
`buffer_mb` of rows) into memory at a time and draws each batch through a permutation of
the rows inside it, so memory is bounded by two windows whatever the cache's size; batch i
is a pure function of (seed, i), so training resumes anywhere. A bfloat16 or float16 cache
holds its windows in that dtype (twice the rows per `buffer_mb`) and gives float32 batches,
converted per batch (`CacheBatches.stored()` gives them as stored, for a GPU to convert).
"""

from __future__ import annotations

import bisect
import copy
import json
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saescope.atomic import atomic_save_tensors, atomic_write_bytes
from saescope.data.shards import (
    FORMAT,
    MANIFEST,
    VERSION,
    Entry,
    as_float,
    cache_dtype,
    check_shards,
    header,
    read_manifest,
    to_stored,
)
from saescope.data.stream import IndexedBatches
from saescope.errors import ConfigError, FormatError, InputError

META_KEYS = ("tokens", "positions", "contexts")
DEFAULT_DTYPE = "float32"


def is_cache(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _shard_name(i: int) -> str:
    return f"shard-{i:06d}.safetensors"


class CacheWriter:
    """Appends harvested batches to a cache, one shard per `shard_contexts` contexts.

    `source` describes what is harvested (model, hooks, context length, text fingerprint); an
    existing cache must match it, so a resumed or grown cache never mixes two sources.
    `dtype` (`data.shards.CACHE_DTYPES`: float32, bfloat16, float16) is what the activations
    are stored as, converted batch by batch where they are; None: float32 for a new cache,
    the cache's own for an existing one (which refuses another).
    """

    def __init__(
        self,
        path: str | Path,
        source: dict[str, Any],
        shard_contexts: int = 256,
        dtype: str | None = None,
    ):
        if dtype is not None:
            cache_dtype(dtype)
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
            self.manifest = read_manifest(self.path)
            if self.manifest["source"] != self.source:
                raise ConfigError(
                    f"{self.path} holds a cache of {_describe(self.manifest['source'])}, not "
                    f"{_describe(self.source)}; give a new --out folder or the same options"
                )
            check_shards(self.path, self.manifest["shards"])
            held = self.manifest.get("dtype", DEFAULT_DTYPE)
            if dtype is not None and dtype != held:
                raise ConfigError(
                    f"{self.path} stores its activations as {held}, not {dtype}; give "
                    f"--dtype {held} to resume or grow it, or a new --out folder"
                )
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
                "dtype": dtype or DEFAULT_DTYPE,
                "hooks": {},
                "shards": [],
            }
        self.shard_contexts = int(self.manifest["shard_contexts"])
        self.dtype = cache_dtype(self.manifest.get("dtype", DEFAULT_DTYPE))
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
        positions, contexts}. Shards are written as soon as they fill. The hooks' rows are
        converted to the cache's dtype where they are (on a GPU: before the copy)."""
        stored = {
            k: (v.detach() if k in META_KEYS else to_stored(k, v, self.dtype))
            for k, v in batch.items()
        }
        self._parts.append({k: v.cpu() for k, v in stored.items()})
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


def _describe(source: dict[str, Any]) -> str:
    keys = ("model", "hooks", "context")
    return ", ".join(f"{k}={source.get(k)}" for k in keys if k in source) or str(source)


class ActivationCache:
    """A finished or growing cache, read through its manifest (complete shards only)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not is_cache(self.path):
            raise InputError(f"{self.path}: no {MANIFEST}; harvest one with `saescope harvest`")
        self.manifest = read_manifest(self.path)
        self.shards = self.manifest["shards"]
        if not self.shards:
            raise InputError(f"{self.path}: the cache has no complete shard yet")
        self.hooks: dict[str, int] = self.manifest["hooks"]
        self.source: dict[str, Any] = self.manifest["source"]
        self.dtype_name: str = self.manifest.get("dtype", DEFAULT_DTYPE)
        self.dtype = cache_dtype(self.dtype_name)
        """What the activations are stored as (caches written before `dtype`: float32)."""
        check_shards(self.path, self.shards)
        self.shard_rows = [int(s["rows"]) for s in self.shards]
        self.n_rows = sum(self.shard_rows)
        self.n_contexts = sum(int(s["n_contexts"]) for s in self.shards)
        self._headers: dict[int, dict[str, Entry]] = {}

    def d(self, hook: str) -> int:
        self.check_hook(hook)
        return self.hooks[hook]

    def check_hook(self, hook: str) -> None:
        if hook not in self.hooks:
            raise ConfigError(
                f"hook {hook!r} is not in the cache {self.path}; it holds {', '.join(self.hooks)}"
            )

    def _entry(self, shard: int, name: str) -> Entry:
        if shard not in self._headers:
            path = self.path / self.shards[shard]["file"]
            found = header(path)
            rows = {e.shape[0] for e in found.values()}
            if rows != {self.shard_rows[shard]}:
                raise FormatError(
                    f"{path}: holds {sorted(rows)} rows, the manifest says "
                    f"{self.shard_rows[shard]}; harvest again into a new folder"
                )
            self._headers[shard] = found
        return self._headers[shard][name]

    def rows(self, name: str, shard: int) -> np.memmap:
        """Tensor `name` (a hook, or tokens/positions/contexts) of one shard, memory-mapped
        (a bfloat16 tensor as its uint16 bits; `tensor` views it as bfloat16)."""
        e = self._entry(shard, name)
        path = self.path / self.shards[shard]["file"]
        return np.memmap(path, dtype=e.dtype, mode="r", offset=e.offset, shape=e.shape)

    def tensor(self, name: str, shard: int, array: np.ndarray) -> Tensor:
        """An array from `rows` or `read` of tensor `name` as a torch tensor of its stored
        dtype (bfloat16 included), sharing its memory."""
        return self._entry(shard, name).tensor(array)

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
        """The first n rows of a tensor across shards, in order (a hook's as float32)."""
        if name not in META_KEYS:
            self.check_hook(name)
        parts, left = [], n
        for i, rows in enumerate(self.shard_rows):
            if left <= 0:
                break
            take = min(rows, left)
            parts.append(self.tensor(name, i, self.read(name, i, 0, take)))
            left -= take
        out = torch.cat(parts)
        return out if name in META_KEYS else as_float(out)


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
        row_bytes = self.cache.dtype.itemsize * (self.d_in + (self.d_out if y_hook else 0))
        self.convert = True  # float32 batches; `stored()`: as the cache stores them
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
        first = self.chunks[chunk_ids[0]][0]
        out = np.empty((sum(sizes), self.cache.d(name)), dtype=self.cache._entry(first, name).dtype)
        at = 0
        for c, n in zip(chunk_ids, sizes, strict=True):
            self.cache.read(name, *self.chunks[c], out=out[at : at + n])
            at += n
        return self.cache.tensor(name, first, out)

    def stored(self) -> CacheBatches:
        """The same stream giving its batches as the cache stores them (bfloat16, float16 or
        float32), for a device that converts them after the copy (half the bytes to move)."""
        out = copy.copy(self)
        out.convert, out._windows, out._plans = False, OrderedDict(), OrderedDict()
        return out

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
        x = as_float(x) if self.convert else x
        if self.y_hook is None:
            return x, x
        y = ys[0] if len(ys) == 1 else torch.cat(ys)  # type: ignore[arg-type]
        return x, (as_float(y) if self.convert else y)

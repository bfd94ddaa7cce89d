"""Peak memory of the shuffling cache reader as the cache grows 10x; writes bench/CACHE.md.

    make bench-cache                # or: .venv/bin/python bench/cache_rss.py [--dir D] [--mb M]

Two activation caches are built with `CacheWriter` from random float32 rows (one hook, d 512,
contexts of 128 rows, shards of 256 contexts) in a temp folder (inside --dir if given, removed
at the end): a small one of N rows (about --mb MiB on disk) and a large one of 10 N rows. N
shrinks to fit the free disk space; the N used is in the results. Writing adds a few contexts
at a time, so the writer holds one shard at most, never the cache.

Each reader then runs on each cache in a fresh subprocess, so its peak RSS is that run's alone,
reading the same number of batches of 4096 rows on both caches (at least one full epoch of the
small cache and several windows of the large one) and summing every batch:

- windowed: `CacheBatches(cache, "resid", batch_size=4096, buffer_mb=64)`, the library's
  shuffling reader (file reads into private memory, a window of about buffer_mb at a time).
- memmap: the naive reader: `ActivationCache.rows` (np.memmap) over every shard, an epoch-long
  permutation of all rows, each batch gathered from the maps by fancy indexing.
- load-all: the other naive reader: `ActivationCache.head` of every row into memory, then
  batches from a permutation of it (skipped when the machine lacks the memory).

Peak RSS is the process's VmHWM from /proc/self/status. getrusage's ru_maxrss is reported too,
but after fork+exec Linux carries the parent's high-water mark into the child's ru_maxrss, so
this parent stays small (stdlib only; the caches are built in a subprocess too). The page cache
of a cache's files is dropped (posix_fadvise DONTNEED, our own files only) before every run, so
every run reads cold from the disk (as cold as the virtual disk below allows).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from machine import cpu_name  # bench/machine.py: this file runs as a script

HERE = Path(__file__).resolve().parent
HOOK = "resid"
D = 512
CONTEXT = 128  # rows per context
SHARD_CONTEXTS = 256  # contexts per shard: 32768 rows, 64 MiB of activations
ADD_CONTEXTS = 8  # contexts per CacheWriter.add
ROW_BYTES = 4 * D + 8 * 3  # float32 activations plus the int64 tokens/positions/contexts
MIB = 2**20
METHODS = ("windowed", "memmap", "load-all")


# ----------------------------------------------------------------- /proc helpers (stdlib)


def _proc_status() -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process in MiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0]) / 1024
    return out


def _mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cache_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file())


def _size_on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in _cache_files(path))


def _drop_page_cache(path: Path) -> None:
    """Ask the kernel to drop the cached pages of this cache's files (clean, fsynced)."""
    for p in _cache_files(path):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------- child processes


def child_build(path: Path, contexts: int, seed: int) -> dict:
    """Write a cache of `contexts` contexts of random rows, ADD_CONTEXTS at a time."""
    import torch

    from saescope.data.cache import CacheWriter

    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    writer = CacheWriter(path, {"bench": "cache_rss", "d": D, "seed": seed}, SHARD_CONTEXTS)
    positions = torch.arange(CONTEXT).repeat(ADD_CONTEXTS)
    for c in range(0, contexts, ADD_CONTEXTS):
        n_ctx = min(ADD_CONTEXTS, contexts - c)
        n = n_ctx * CONTEXT
        batch = {
            HOOK: torch.randn(n, D, generator=gen),
            "tokens": torch.randint(0, 50_000, (n,), generator=gen),
            "positions": positions[:n],
            "contexts": torch.arange(c, c + n_ctx).repeat_interleave(CONTEXT),
        }
        writer.add(batch, n_ctx)
    writer.flush()
    return {
        "rows": writer.rows,
        "shards": len(writer.manifest["shards"]),
        "seconds": time.perf_counter() - start,
        "peak_mib": _proc_status()["VmHWM"],
    }


def child_read(
    method: str, path: Path, batches: int, batch_size: int, buffer_mb: float, seed: int
) -> dict:
    """Read `batches` shuffled batches with one method, summing each; memory and speed."""
    import resource

    import numpy as np
    import torch

    from saescope.data.cache import ActivationCache, CacheBatches

    torch.set_num_threads(1)
    base = _proc_status()
    start = time.perf_counter()
    cache = ActivationCache(path)
    n_rows = cache.n_rows
    total, windows, largest = 0.0, None, [0]
    if method == "windowed":
        reader = CacheBatches(cache, HOOK, batch_size=batch_size, seed=seed, buffer_mb=buffer_mb)
        loads = [0]
        load = reader._load

        def counting_load(name, chunk_ids):
            loads[0] += 1
            rows = sum(reader.chunks[c][2] - reader.chunks[c][1] for c in chunk_ids)
            largest[0] = max(largest[0], rows)
            return load(name, chunk_ids)

        reader._load = counting_load  # count the windows read (one load per window: no y_hook)
        for i in range(batches):
            x, _ = reader.batch(i)
            total += float(x.sum())
            del x, _
        windows = loads[0]
    elif method == "memmap":
        maps = [cache.rows(HOOK, s) for s in range(len(cache.shards))]
        bounds = np.cumsum([0, *cache.shard_rows])
        rng = np.random.default_rng(seed)
        per_epoch = n_rows // batch_size
        perm = None
        for i in range(batches):
            j = i % per_epoch
            if j == 0:
                perm = rng.permutation(n_rows)
            idx = np.sort(perm[j * batch_size : (j + 1) * batch_size])
            shard = np.searchsorted(bounds, idx, side="right") - 1
            parts = [maps[s][idx[shard == s] - bounds[s]] for s in np.unique(shard)]
            x = np.concatenate(parts)
            total += float(x.sum(dtype=np.float64))
            del x, parts
    elif method == "load-all":
        rows = cache.head(HOOK, n_rows)
        gen = torch.Generator().manual_seed(seed)
        per_epoch = n_rows // batch_size
        perm = None
        for i in range(batches):
            j = i % per_epoch
            if j == 0:
                perm = torch.randperm(n_rows, generator=gen)
            x = rows[perm[j * batch_size : (j + 1) * batch_size]]
            total += float(x.sum())
            del x
    else:
        raise SystemExit(f"unknown method {method}")
    seconds = time.perf_counter() - start
    end = _proc_status()
    return {
        "method": method,
        "rows": n_rows,
        "batches": batches,
        "rows_read": batches * batch_size,
        "seconds": seconds,
        "rows_per_s": batches * batch_size / seconds,
        "windows": windows,
        "largest_window_rows": largest[0] or None,
        "baseline_anon_mib": base["RssAnon"],
        "baseline_mib": base["VmRSS"],
        "peak_mib": end["VmHWM"],
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "anon_end_mib": end["RssAnon"],
        "file_end_mib": end["RssFile"],
        "checksum": total,
        "torch": torch.__version__,
    }


def _spawn(args: list[str]) -> dict:
    """Run this script as a child with `args`; its last stdout line is a JSON result."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- the parent


def plan_contexts(target_mib: float, free_bytes: int) -> tuple[int, bool]:
    """Contexts of the small cache: about target_mib on disk, shrunk so that both caches
    (11x the small one) plus slack fit in 80% of the free disk space."""
    ctx_bytes = CONTEXT * ROW_BYTES
    contexts = max(1, round(target_mib * MIB / ctx_bytes))
    fit = int((0.8 * free_bytes - 256 * MIB) / (11 * ctx_bytes))
    if fit < contexts:
        if fit < 2 * ADD_CONTEXTS:
            raise SystemExit(f"only {free_bytes / MIB:.0f} MiB free on the disk; give --dir")
        return fit, True
    return contexts, False


def _sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.rstrip()
    except (OSError, subprocess.CalledProcessError):
        return "(unavailable)"


def write_results(path: Path, a: argparse.Namespace, info: dict, results: list[dict]) -> None:
    window_mib = info["window_rows"] * 4 * D / MIB
    lines = [
        "# Cache reader memory",
        "",
        f"Written by `bench/cache_rss.py` (`make bench-cache`) on {date.today().isoformat()}; "
        f"the whole bench ran {info['bench_s']:.0f} s.",
        "",
        f"- Machine: {cpu_name()}, `nproc` {info['nproc']}, Linux {platform.release()}, "
        f"Python {platform.python_version()}, torch {results[0]['torch']} with 1 thread; "
        f"load average (1 min) {info['load_before']:.1f} before, {info['load_after']:.1f} "
        "after (the machine is shared: rows/s is indicative, memory is not affected).",
        f"- `free -g` before the run:\n\n```\n{info['free']}\n```\n",
        f"- Caches: random float32 rows, one hook `{HOOK}` of d {D}, contexts of {CONTEXT} "
        f"rows, shards of {SHARD_CONTEXTS} contexts ({SHARD_CONTEXTS * CONTEXT:,} rows); "
        f"small N = {info['rows']['small']:,} rows, large {info['rows']['large']:,} "
        f"(10x the contexts). N was "
        + (
            f"shrunk to fit the free disk ({info['free_disk_mib']:,.0f} MiB free)."
            if info["shrunk"]
            else f"not shrunk ({info['free_disk_mib']:,.0f} MiB free on the disk)."
        ),
        f"- Writing them: {info['build']['small']['seconds']:.1f} s and "
        f"{info['build']['large']['seconds']:.1f} s, writer peak RSS "
        f"{info['build']['small']['peak_mib']:.0f} and {info['build']['large']['peak_mib']:.0f} "
        "MiB (the writer holds one shard, never the cache).",
        f"- Reading: {a.batches} batches of {a.batch_size} rows on both caches, each summed: "
        f"{a.batches / info['per_epoch_small']:.2f} epochs of the small cache; windowed reader "
        f"`CacheBatches(..., batch_size={a.batch_size}, buffer_mb={a.buffer_mb:g})`: windows of "
        f"{info['window_rows']:,} rows ({window_mib:.0f} MiB). Each run in a fresh process, "
        "its cache's page cache dropped first (cold reads).",
        "- Peak RSS: VmHWM of the run's process; baseline: its VmRSS right after importing "
        "numpy, torch and saescope; rows/s: rows read over the time from opening the cache to "
        "the last batch (load-all's load included). MiB = 2^20 bytes.",
        "",
        "| reader | cache | MiB on disk | rows | batches read | windows read | peak RSS MiB | "
        "above baseline MiB | anon / file RSS at end MiB | rows/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["method"], r["cache"]): r for r in results}
    for r in results:
        lines.append(
            f"| {r['method']} | {r['cache']} | {info['disk_mib'][r['cache']]:,.0f} | "
            f"{r['rows']:,} | {r['batches']} | "
            f"{r['windows'] if r['windows'] is not None else '-'} | {r['peak_mib']:,.0f} | "
            f"{r['peak_mib'] - r['baseline_mib']:,.0f} | "
            f"{r['anon_end_mib']:,.0f} / {r['file_end_mib']:,.0f} | {r['rows_per_s']:,.0f} |"
        )
    lines += ["", "Large / small (10x the rows):", ""]
    for m in METHODS:
        if (m, "small") in by and (m, "large") in by:
            s, g = by[(m, "small")], by[(m, "large")]
            above_s = s["peak_mib"] - s["baseline_mib"]
            above_g = g["peak_mib"] - g["baseline_mib"]
            lines.append(
                f"- {m}: peak RSS {g['peak_mib'] / s['peak_mib']:.2f}x, RSS above baseline "
                f"{above_g / max(above_s, 1e-9):.2f}x ({above_s:,.0f} -> {above_g:,.0f} MiB)."
            )
        elif m in info["skipped"]:
            lines.append(f"- {m}: skipped ({info['skipped'][m]}).")
    lines += ["", "Notes:", ""]
    for r in (by[k] for k in (("windowed", "small"), ("windowed", "large")) if k in by):
        above = r["peak_mib"] - r["baseline_mib"]
        held = r["anon_end_mib"] - r["baseline_anon_mib"]
        big = r["largest_window_rows"] * 4 * D / MIB
        lines.append(
            f"- windowed, {r['cache']} cache: peak {above:,.0f} MiB above baseline = "
            f"{above / window_mib:.1f} windows of {window_mib:.0f} MiB (its largest window "
            f"read: {r['largest_window_rows']:,} rows, {big:.0f} MiB); after the last batch, "
            f"anon RSS {held:,.0f} MiB above the baseline's ({held / window_mib:.1f} windows)."
        )
    if ("windowed", "large") in by:
        lines.append(
            "- `CacheBatches` frees the oldest window before reading a new one into one array, "
            "keeps at most two, and gathers each batch through the window's permutation (the "
            "peaks above also count the batches in flight). A window "
            "overshoots `buffer_mb` by up "
            "to one chunk when the epoch's chunk order puts a shard's short last chunk in it. "
            "None of this grows with the cache."
        )
    if ("memmap", "small") in by and ("memmap", "large") in by:
        s, g = by[("memmap", "small")], by[("memmap", "large")]
        lines.append(
            f"- memmap: anon RSS at the end {s['anon_end_mib']:,.0f} -> "
            f"{g['anon_end_mib']:,.0f} MiB, file-backed RSS {s['file_end_mib']:,.0f} -> "
            f"{g['file_end_mib']:,.0f} MiB: reading {g['rows_read'] / g['rows']:.0%} of the "
            "large cache's rows at random (rows 2 KiB, pages 4 KiB) left pages of most of the "
            "cache mapped (the kernel reads around each fault and maps the cached pages "
            "nearby). That is clean page cache the kernel may reclaim under pressure, but "
            "`top`, ru_maxrss and a cgroup memory limit charge it to the process; what the "
            "reader allocates itself (anon) stays flat."
        )
    lines += [
        "- RSS counts the file-backed pages a process has mapped as well as its own memory. "
        "`CacheBatches` reads with plain file reads into private memory, so no mapping stays "
        "behind "
        "and its growth is its own buffers (anon); the page cache the kernel keeps of files "
        "read but not mapped is in no process's RSS. The file RSS of about 80 MiB in every "
        "run is the mapped Python, numpy and torch libraries.",
        "- Speed: each run's cache has its page cache dropped before the run, so the large "
        "cache's reads all come from the disk (a virtual one: its host may cache), while the "
        "small cache is re-read from the page cache after its first epoch. load-all's rows/s "
        "includes loading the whole cache.",
        "- ru_maxrss is in the raw numbers below: after fork+exec Linux starts a child's "
        "ru_maxrss at its parent's high-water mark, so peak RSS here is VmHWM (this parent "
        "imports neither numpy nor torch, so the two agree here).",
    ]
    lines += [
        "",
        "Raw numbers (JSON, one line per run):",
        "",
        "```",
        *(json.dumps(r, sort_keys=True) for r in results),
        "```",
        "",
    ]
    path.write_text("\n".join(lines))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=None, help="where to build the temp caches")
    p.add_argument("--mb", type=float, default=200, help="small cache size on disk, MiB")
    p.add_argument("--batches", type=int, default=64, help="batches read per run")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--buffer-mb", type=float, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--out", type=Path, default=HERE / "CACHE.md")
    p.add_argument("--child", choices=("build", *METHODS), help=argparse.SUPPRESS)
    p.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--contexts", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    if a.child == "build":
        print(json.dumps(child_build(a.cache, a.contexts, a.seed)))
        return
    if a.child:
        r = child_read(a.child, a.cache, a.batches, a.batch_size, a.buffer_mb, a.seed)
        print(json.dumps(r))
        return

    bench_start = time.perf_counter()
    info: dict = {"load_before": os.getloadavg()[0], "nproc": _sh(["nproc"]), "skipped": {}}
    info["free"] = _sh(["free", "-g"])
    parent = a.dir if a.dir is not None else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    free_disk = shutil.disk_usage(parent).free
    info["free_disk_mib"] = free_disk / MIB
    contexts, info["shrunk"] = plan_contexts(a.mb, free_disk)
    rows_small = contexts * CONTEXT
    info["per_epoch_small"] = rows_small // a.batch_size
    info["window_rows"] = max(a.batch_size, int(a.buffer_mb * MIB / (4 * D)))
    # at least one epoch of the small cache and three windows of the large one
    need = max(info["per_epoch_small"] + 1, -(-3 * info["window_rows"] // a.batch_size) + 1)
    if a.batches < need:
        print(f"--batches {a.batches} -> {need} (an epoch of the small cache, 3 windows)")
        a.batches = need

    work = Path(tempfile.mkdtemp(prefix="saescope-cache-rss-", dir=parent))
    results: list[dict] = []
    try:
        caches = {"small": work / "small", "large": work / "large"}
        info["build"], info["rows"], info["disk_mib"] = {}, {}, {}
        for name, n_ctx in (("small", contexts), ("large", 10 * contexts)):
            b = _spawn(["--child", "build", "--cache", str(caches[name]), "--contexts", str(n_ctx)])
            info["build"][name] = b
            info["rows"][name] = b["rows"]
            info["disk_mib"][name] = _size_on_disk(caches[name]) / MIB
            print(
                f"built {name}: {b['rows']:,} rows, {b['shards']} shards, "
                f"{info['disk_mib'][name]:,.0f} MiB in {b['seconds']:.1f} s "
                f"(writer peak {b['peak_mib']:.0f} MiB)"
            )
        for method in a.methods:
            if method == "load-all":
                # head() holds the shard reads and their concatenation: about 2x the cache
                want = 2.5 * info["disk_mib"]["large"] + 1024
                if _mem_available_mib() < want:
                    info["skipped"][method] = (
                        f"MemAvailable {_mem_available_mib():,.0f} MiB < {want:,.0f} MiB"
                    )
                    print(f"skip load-all: {info['skipped'][method]}")
                    continue
            for name, path in caches.items():
                _drop_page_cache(path)
                args = ["--child", method, "--cache", str(path), "--batches", str(a.batches)]
                args += ["--batch-size", str(a.batch_size), "--buffer-mb", str(a.buffer_mb)]
                r = _spawn([*args, "--seed", str(a.seed)])
                r["cache"] = name
                results.append(r)
                print(
                    f"{method:9s} {name:5s}: peak {r['peak_mib']:7,.0f} MiB (baseline "
                    f"{r['baseline_mib']:,.0f}, anon {r['anon_end_mib']:,.0f} / file "
                    f"{r['file_end_mib']:,.0f} at end), {r['rows_per_s']:,.0f} rows/s, "
                    f"windows {r['windows']}"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info["load_after"] = os.getloadavg()[0]
    info["bench_s"] = time.perf_counter() - bench_start
    write_results(a.out, a, info, results)
    print(f"wrote {a.out} ({info['bench_s']:.0f} s)")


if __name__ == "__main__":
    main()

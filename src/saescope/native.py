"""saescope's CPU kernels (`_csrc/sparse_kernels.c`): compiled on first use, called via ctypes.

What the sparse path spends outside the encoder matmul, in C: the per-token top-k and the
"entries above a threshold" (ReLU, JumpReLU, BatchTopK) as one scan of each row of the bias-free
encoder product with the bias added on the fly; the decode with its error; the decoder's two
gradients in one pass; the encoder's weight gradient; the decoder-gradient projection. Each is
checked against torch in the tests (float32 and float64).

The source is compiled once per machine with the system C compiler (`$CC`, else `cc`) into the
user cache folder (`$SAESCOPE_CACHE`, else `$XDG_CACHE_HOME/saescope`, else
`~/.cache/saescope`), keyed by the source, the flags and the CPU, and written atomically.
Without a compiler, or with `SAESCOPE_NATIVE=0`, the sparse path runs in plain torch with the
same results (`available()` says which).

Threads: built with OpenMP, the kernels run in the process's OpenMP pool, which is torch's own
(both load libgomp.so.1), with torch's thread count; otherwise rows are split among Python
worker threads (ctypes releases the GIL).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

_SOURCE = Path(__file__).parent / "_csrc" / "sparse_kernels.c"
_FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-shared", "-fPIC", "-std=c99"]
_OPENMP = ["-fopenmp"]  # tried first; without it the rows are split on Python threads
_DTYPES = {torch.float32: "f32", torch.float64: "f64"}
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_I64 = ctypes.c_int64
_INT = ctypes.c_int
_PTR = ctypes.c_void_p


def cache_dir() -> Path:
    if os.environ.get("SAESCOPE_CACHE"):
        return Path(os.environ["SAESCOPE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "saescope"


def _cpu_key() -> str:
    """The CPU's feature flags (-march=native code may not run on another CPU)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compile(cc: str, flags: list[str]) -> Path:
    src = _SOURCE.read_bytes()
    key = hashlib.sha256(src + " ".join([cc, *flags, _cpu_key()]).encode()).hexdigest()[:16]
    out = cache_dir() / "kernels" / f"sparse_kernels-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        subprocess.run(
            [cc, *flags, str(_SOURCE), "-o", tmp], check=True, capture_output=True, timeout=120
        )
        os.replace(tmp, out)  # atomic: a concurrent build or a kill leaves no half file
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def _declare(lib: ctypes.CDLL) -> None:
    lib.saescope_openmp.restype = ctypes.c_int
    lib.saescope_openmp.argtypes = []
    for s in _DTYPES.values():
        f = getattr(lib, f"topk_bias_{s}")
        f.restype = _I64
        f.argtypes = [_PTR, _I64, _PTR, _I64, _I64, _I64, _I64, _PTR, _PTR, _INT]
        f = getattr(lib, f"count_above_{s}")
        f.restype = None
        f.argtypes = [_PTR, _I64, _PTR, _PTR, _I64, ctypes.c_int, _I64, _I64, _I64, _PTR, _INT]
        f = getattr(lib, f"take_above_{s}")
        f.restype = None
        f.argtypes = [_PTR, _I64, _PTR, _PTR, _I64, ctypes.c_int, _I64, _I64, _I64]
        f.argtypes += [_PTR, _PTR, _PTR, _INT]
        f = getattr(lib, f"decode_backward_{s}")
        f.restype = None
        f.argtypes = [_PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _I64, ctypes.c_double, _I64, _I64]
        f.argtypes += [_PTR, _PTR, _INT]
        f = getattr(lib, f"segment_sum_{s}")
        f.restype = None
        f.argtypes = [_PTR, _PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64, _PTR, _INT]
        f = getattr(lib, f"decode_error_{s}")
        f.restype = None
        f.argtypes = [_PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64, _PTR, _PTR, _PTR, _INT]
        f = getattr(lib, f"remove_parallel_{s}")
        f.restype = None
        f.argtypes = [_PTR, _PTR, _I64, _I64, _I64, ctypes.c_double, _INT]
        f = getattr(lib, f"pattern_dot_{s}")
        f.restype = None
        f.argtypes = [_PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64, _PTR, _INT]


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (no compiler, a failed build, or SAESCOPE_NATIVE=0)."""
    global _lib, _tried
    if os.environ.get("SAESCOPE_NATIVE", "1") == "0":
        return None
    with _lock:
        if not _tried:
            _tried = True
            cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
            for flags in ([*_FLAGS, *_OPENMP], _FLAGS) if cc is not None else ():
                try:
                    lib = ctypes.CDLL(str(_compile(cc, flags)))  # type: ignore[arg-type]
                    _declare(lib)
                except (OSError, subprocess.SubprocessError, AttributeError):
                    continue
                _lib = lib
                break
        return _lib


def available() -> bool:
    return library() is not None


def usable(*ts: Tensor) -> bool:
    """Whether the kernels can take these tensors: compiled, CPU, float32/64 alike. Every
    caller asks this first, so on CUDA (or any other device) the torch path runs."""
    if not all(t.device.type == "cpu" and t.dtype in _DTYPES for t in ts):
        return False
    return len({t.dtype for t in ts}) == 1 and available()


def _ptr(t: Tensor) -> int:
    return t.data_ptr()


def _run_rows(
    n: int, fn: Callable[[int, int, int], object], offsets: Tensor | None = None
) -> list[object]:
    """fn(r0, r1, threads) over rows [0, n) with torch's thread count: one call when the
    kernels have OpenMP (they share torch's pool), else row ranges on worker threads (with
    CSR offsets (n + 1,), ranges of equal numbers of non-zeros)."""
    global _pool, _pool_size
    threads = min(torch.get_num_threads(), max(n // 64, 1))
    lib = library()
    if threads <= 1 or (lib is not None and lib.saescope_openmp()):
        return [fn(0, n, threads)]
    with _lock:
        if _pool is None or _pool_size < threads:
            if _pool is not None:  # a bigger pool replaces it; its idle threads end
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="saescope-native")
            _pool_size = threads
        pool = _pool
    if offsets is None:
        bounds = [n * i // threads for i in range(threads + 1)]
    else:
        shares = torch.linspace(0, int(offsets[-1]), threads + 1).to(offsets.dtype)
        bounds = torch.searchsorted(offsets, shares).clamp_(max=n).tolist()
        bounds[0], bounds[-1] = 0, n
    futures = [pool.submit(fn, bounds[i], bounds[i + 1], 1) for i in range(threads)]
    return [f.result() for f in futures]


def _rows_ok(a: Tensor) -> None:
    if a.dim() != 2 or a.stride(1) != 1:
        raise ValueError("the kernels need a 2-D tensor with contiguous rows")


def topk_bias(a: Tensor, b: Tensor, k: int) -> tuple[Tensor, Tensor] | None:
    """The k largest of a[n] + b per row: (indices (N, k) ascending, values (N, k)), or None
    when a row holds a NaN or an infinity (torch then decides, as the dense path does)."""
    lib = library()
    assert lib is not None
    _rows_ok(a)
    n, m = a.shape
    b = b.contiguous()
    idx = torch.empty(n, k, dtype=torch.int64)
    val = torch.empty(n, k, dtype=a.dtype)
    f = getattr(lib, f"topk_bias_{_DTYPES[a.dtype]}")
    pa, lda, pb, pi, pv = _ptr(a), a.stride(0), _ptr(b), _ptr(idx), _ptr(val)
    bad = _run_rows(n, lambda r0, r1, t: f(pa, lda, pb, r0, r1, m, k, pi, pv, t))
    if any(int(x) != 0 for x in bad):  # type: ignore[call-overload]
        if any(int(x) < 0 for x in bad):  # type: ignore[call-overload]
            raise MemoryError("saescope's top-k kernel could not allocate its scratch memory")
        return None
    return idx, val


def above_bias(
    a: Tensor, b: Tensor, t: Tensor | float, inclusive: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Entries with a[n, j] + b[j] > t[j] (>= when inclusive), t a scalar or (M,):
    (crow (N + 1,), col (nnz,) ascending per row, values (nnz,))."""
    lib = library()
    assert lib is not None
    _rows_ok(a)
    n, m = a.shape
    b = b.contiguous()
    tt = torch.as_tensor(t).detach().to(a.dtype).contiguous()
    if tt.numel() == 1:
        tt = tt.reshape(())
    elif tt.shape != (m,):
        raise ValueError(f"threshold of shape {tuple(tt.shape)} for {m} latents: give one or {m}")
    ts = 1 if tt.dim() == 1 else 0
    s = _DTYPES[a.dtype]
    count, take = getattr(lib, f"count_above_{s}"), getattr(lib, f"take_above_{s}")
    pa, lda, pb, pt, inc = _ptr(a), a.stride(0), _ptr(b), _ptr(tt), int(inclusive)
    counts = torch.empty(n, dtype=torch.int64)
    pc = _ptr(counts)
    _run_rows(n, lambda r0, r1, t: count(pa, lda, pb, pt, ts, inc, r0, r1, m, pc, t))
    crow = torch.zeros(n + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=crow[1:])
    nnz = int(crow[-1])
    col = torch.empty(nnz, dtype=torch.int64)
    val = torch.empty(nnz, dtype=a.dtype)
    pr, pcol, pv = _ptr(crow), _ptr(col), _ptr(val)
    _run_rows(n, lambda r0, r1, t: take(pa, lda, pb, pt, ts, inc, r0, r1, m, pr, pcol, pv, t))
    return crow, col, val


def pattern_dot(crow: Tensor, col: Tensor, y: Tensor, table: Tensor) -> Tensor:
    """out[j] = y[n] . table[col[j]] for each non-zero j of row n (CSR crow, col): (nnz,)."""
    lib = library()
    assert lib is not None
    n, d = y.shape
    out = torch.empty(col.shape[0], dtype=y.dtype)
    crow, col, y, table = crow.contiguous(), col.contiguous(), y.contiguous(), table.contiguous()
    f = getattr(lib, f"pattern_dot_{_DTYPES[y.dtype]}")
    pc, pk, py, pt, po = _ptr(crow), _ptr(col), _ptr(y), _ptr(table), _ptr(out)
    _run_rows(n, lambda r0, r1, t: f(pc, pk, py, pt, d, r0, r1, po, t), offsets=crow)
    return out


def decode_backward(
    tcrow: Tensor,
    order: Tensor,
    rows: Tensor,
    vals: Tensor,
    grad_out: Tensor,
    W_dec: Tensor,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Both gradients of out = f W_dec, f given by a by-latent CSR (tcrow (M + 1,), order
    (nnz,)), each non-zero's token `rows` and `vals`, for an upstream gradient
    scale * grad_out (N, D): (grad_vals (nnz,), grad_W_dec (M, D)), reading each row of
    grad_out once."""
    lib = library()
    assert lib is not None
    m, d = W_dec.shape
    gvals = torch.empty(vals.shape[0], dtype=vals.dtype)
    gw = torch.empty(m, d, dtype=W_dec.dtype)
    args = [t.contiguous() for t in (tcrow, order, rows, vals, grad_out, W_dec)]
    ptrs = [_ptr(t) for t in args]
    f = getattr(lib, f"decode_backward_{_DTYPES[W_dec.dtype]}")
    pv, pw = _ptr(gvals), _ptr(gw)
    _run_rows(m, lambda r0, r1, t: f(*ptrs, d, scale, r0, r1, pv, pw, t), offsets=args[0])
    return gvals, gw


def decode_error(
    crow: Tensor, col: Tensor, vals: Tensor, W_dec: Tensor, b_dec: Tensor | None, y: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The sparse decode and its error in one pass: (y_hat, e = y_hat - y, |e|^2 per row),
    y_hat[n] = b_dec + sum over row n's non-zeros j of vals[j] W_dec[col[j]]."""
    lib = library()
    assert lib is not None
    n, d = y.shape
    y_hat, e = torch.empty(n, d, dtype=y.dtype), torch.empty(n, d, dtype=y.dtype)
    sq = torch.empty(n, dtype=y.dtype)
    args = [t.contiguous() for t in (crow, col, vals, W_dec)]
    b = None if b_dec is None else b_dec.detach().contiguous()
    yc = y.detach().contiguous()
    ptrs = [_ptr(t) for t in args] + [None if b is None else _ptr(b), _ptr(yc)]
    f = getattr(lib, f"decode_error_{_DTYPES[y.dtype]}")
    po = [_ptr(y_hat), _ptr(e), _ptr(sq)]
    _run_rows(n, lambda r0, r1, t: f(*ptrs, d, r0, r1, *po, t), offsets=args[0])
    return y_hat, e, sq


def remove_parallel_(grad: Tensor, w: Tensor, eps2: float) -> Tensor:
    """grad[r] -= (grad[r] . w[r]) / max(|w[r]|^2, eps2) w[r], in place; both (M, D)
    contiguous. Returns grad."""
    lib = library()
    assert lib is not None
    m, d = w.shape
    f = getattr(lib, f"remove_parallel_{_DTYPES[w.dtype]}")
    pg, pw = _ptr(grad), _ptr(w)
    _run_rows(m, lambda r0, r1, t: f(pg, pw, d, r0, r1, eps2, t))
    return grad


def segment_sum(seg: Tensor, perm: Tensor, src: Tensor, w: Tensor, table: Tensor) -> Tensor:
    """out[r] = sum over j in [seg[r], seg[r + 1]) of w[q] table[src[q]], q = perm[j]:
    (len(seg) - 1, D), rows with no entries zero."""
    lib = library()
    assert lib is not None
    n, d = seg.shape[0] - 1, table.shape[1]
    out = torch.empty(n, d, dtype=table.dtype)
    args = [t.contiguous() for t in (seg, perm, src, w, table)]
    ptrs = [_ptr(t) for t in args]
    f = getattr(lib, f"segment_sum_{_DTYPES[table.dtype]}")
    po = _ptr(out)
    _run_rows(n, lambda r0, r1, t: f(*ptrs, d, r0, r1, po, t), offsets=args[0])
    return out

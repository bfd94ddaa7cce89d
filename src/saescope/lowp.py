"""The SAE's encoder product in bfloat16, and how fast bfloat16 is on this machine.

`product(x, W)` is pre = x @ W computed from bfloat16 copies of x and W with float32
accumulation, returned as float32: the one N x d_sae piece of an SAE step, and the only part
of it in bfloat16 (master weights, gradients, Adam state, the chosen codes' values and every
other product stay float32). The copy of a weight is cached and made again when the weight
changes (after each optimiser step, `forget`, and whenever its version counter moves:
resampling, a checkpoint loaded), so one copy serves every product between two steps.

Where the processor has no native bfloat16 matmul (an AVX2 CPU, where torch's bf16 matmul
runs 8 to 80 times slower than fp32) the product is emulated with the same rounding: inputs
rounded to bfloat16 and multiplied in float32 (a product of two bf16 numbers is exact in
float32), the result rounded to bfloat16 as the CPU's bf16 matmul rounds it. Same numbers up to
the order of the float32 sums, at fp32 speed: the quality tests run on any machine.

`mm(x, W)` is the same product with autograd for the dense path: the backward computes the
gradients of x and W in float32 from the float32 x and W, as if the product were exact (the
straight-through rule of mixed-precision training).

`speedup(device)` times bf16 against fp32 on a moderate matmul (best of a few, some ms);
`cpu_flags()` reads the CPU's bf16 flags. `saescope.precision` decides with them.
"""

from __future__ import annotations

import os
import threading
import time
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

LOW = torch.bfloat16
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""The x86 CPU flags of a native bfloat16 matmul (Linux /proc/cpuinfo names)."""
PROBE_ENV = "SAESCOPE_BF16_SPEEDUP"
"""Forces the probe's answer (a number: bf16's speed over fp32, e.g. 0.2 or 2.3)."""
PROBE_SHAPE = (256, 512, 512)
"""(N, D, M) of the probe's product: 134 MFLOP, about 1 ms in fp32 on one core of a 2020s CPU."""

_copies: dict[int, tuple[Any, Tensor, Tensor]] = {}
_lock = threading.Lock()


def low_copy(w: Tensor, emulated: bool = False) -> Tensor:
    """A bfloat16 copy of w (same layout), made again only when w changed since the last;
    emulated: w rounded to bfloat16, held in float32."""
    key = (w.data_ptr(), w._version, tuple(w.shape), tuple(w.stride()), w.device, emulated)
    with _lock:
        got = _copies.get(id(w))
        if got is not None and got[0] == key and got[1] is w:
            return got[2]
    low = torch.empty_like(w, dtype=LOW).copy_(w.detach())
    if emulated:
        low = torch.empty_like(w).copy_(low)
    with _lock:
        _copies[id(w)] = (key, w, low)
        if len(_copies) > 16:  # weights of SAEs long gone: drop the oldest
            _copies.pop(next(iter(_copies)))
    return low


def forget(w: Tensor) -> None:
    """Drop w's copy: the next product makes it again. The optimiser step calls it, since the
    fused Adam writes the weights without moving their version counter."""
    with _lock:
        _copies.pop(id(w), None)


def release_copies() -> None:
    """Drop every cached bfloat16 copy (training calls it when it ends)."""
    with _lock:
        _copies.clear()


def product(x: Tensor, w: Tensor, out: Tensor | None = None, native: bool | None = None) -> Tensor:
    """x (N, D) @ w (D, M) from bfloat16 copies, float32 accumulation, float32 result (in
    `out` when given). On CUDA the matmul writes float32 itself where torch offers it; on a CPU
    the bfloat16 result is widened (it carries bf16's 8 significant bits: enough to choose the
    codes, whose values the sparse path computes again in float32). native=False emulates it
    (see the module's docstring); None: emulated where `native_matmul` says so."""
    if native is None:
        native = native_matmul(x.device)
    if not native:
        res = torch.mm(x.detach().to(LOW).float(), low_copy(w, emulated=True))
        res = res.to(LOW)
        return res.float() if out is None else out.copy_(res)
    xl, wl = x.detach().to(LOW), low_copy(w)
    if x.device.type == "cuda":
        try:
            res = torch.mm(xl, wl, out_dtype=torch.float32)  # type: ignore[call-overload]
        except (TypeError, RuntimeError, NotImplementedError):
            res = torch.mm(xl, wl)
    else:
        res = torch.mm(xl, wl)
    if out is None:
        return res.float()
    return out.copy_(res)


class _Product(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(x, w)
        return product(x, w)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, w = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad
        return (g @ w.t() if need_x else None), (x.t() @ g if need_w else None)


def mm(x: Tensor, w: Tensor) -> Tensor:
    """`product` with float32 gradients for x and w (the dense path's encoder product)."""
    return _Product.apply(x, w)


# ----- how fast bf16 is here ------------------------------------------------------------------


@cache
def cpu_flags() -> frozenset[str] | None:
    """The CPU's flags (Linux), None where /proc/cpuinfo cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return None


def native_bf16_flags() -> list[str] | None:
    """The CPU's bf16 flags present ([] for none), None where the flags cannot be read."""
    flags = cpu_flags()
    return None if flags is None else [f for f in BF16_FLAGS if f in flags]


def native_matmul(device: torch.device | str) -> bool:
    """Whether `product` runs a real bfloat16 matmul on `device`: CUDA with bf16 support, a CPU
    with avx512_bf16 or amx_bf16 (where the flags cannot be read: bf16 timed at least as fast
    as fp32)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if dev.type != "cpu":
        return False
    flags = native_bf16_flags()
    return bool(flags) if flags is not None else measured_speedup("cpu") >= 1.0


def _best(fn: Any, repeats: int, sync: Any, give_up: float = float("inf")) -> float:
    """The best time of `repeats` calls of fn (after a warm-up); stops after the first timed
    call when it took longer than give_up seconds."""
    fn()  # warm-up: the first call pays for packing and allocation
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
        if best > give_up:
            break
    return best


def forced_speedup() -> float | None:
    """The probe's answer as forced by $SAESCOPE_BF16_SPEEDUP, None when unset."""
    value = os.environ.get(PROBE_ENV)
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"${PROBE_ENV}={value!r}: give a number such as 0.2 or 2.3") from None


@cache
def measured_speedup(device: str = "cpu", repeats: int = 3) -> float:
    """fp32 time / bf16 time of a (N, D) @ (D, M) product (PROBE_SHAPE) on `device`, best of
    `repeats` each: > 1 where bf16 is faster. Once per process and device."""
    n, d, m = PROBE_SHAPE
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, d, generator=gen).to(dev)
    b = torch.randn(d, m, generator=gen).to(dev)
    al, bl = a.to(LOW), b.to(LOW)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    fp32 = _best(lambda: a @ b, repeats, sync)
    bf16 = _best(lambda: al @ bl, repeats, sync, give_up=3 * fp32)  # clearly slower: enough
    return fp32 / max(bf16, 1e-9)

"""`--precision fp32|bf16|auto`: what a run computes in bfloat16, and how `auto` chooses.

bf16 means: the SAE's encoder product from bfloat16 copies of the input and W_enc (float32
accumulation, `saescope.lowp`), and the language model's forward under
`torch.autocast(device, torch.bfloat16)`. Master weights, gradients, Adam state, the chosen
codes' values, the decoder, every loss and metric, and the activations handed to an SAE stay
float32. docs/PRECISION.md says more, with measured quality and speed.

`auto` picks bf16 on a CUDA device that supports it, and on a CPU only where a short probe
(`lowp.measured_speedup`: a moderate matmul in both, best of a few, some ms) finds bf16 at
least SPEEDUP_MIN times faster than fp32; a CPU without the avx512_bf16 / amx_bf16 flags gets
fp32 without being timed. $SAESCOPE_BF16_SPEEDUP forces the probe's answer (tests, or a machine
whose timing is known).

The model's precision is ambient (`model_precision`): a model from `models.load_model` runs its
forward under autocast while a `model_precision("bf16")` block is open (`follow`), so the
commands set it once around their work; hooks that hand activations to an SAE or splice an SAE
in take them as float32 with autocast off (`fp32_region`, `as_float32`).
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from saescope import lowp
from saescope.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "auto")
SPEEDUP_MIN = 1.3
"""auto picks bf16 on a CPU where the probe finds it at least this many times faster."""
FP16_CPU = (
    "--precision fp16 is refused on a CPU: float16 matmuls run at about 1 GFLOP/s there (no "
    "native fp16 arithmetic), hundreds of times slower than fp32; use --precision bf16 or auto"
)


class SlowPrecisionWarning(UserWarning):
    """bf16 was asked for where it is not native: it runs (emulated in the SAE step), slower
    than or as fast as fp32."""


@dataclass(frozen=True)
class Choice:
    """A resolved precision ("fp32" or "bf16"), why, and whether bf16 is native here."""

    name: str
    reason: str
    native: bool = True

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def line(self) -> str:
        """The one line a command prints about it."""
        return f"precision: {self.name} ({self.reason})"


def check_name(name: str, device: str | torch.device = "cpu") -> None:
    """A ConfigError for anything but fp32, bf16 or auto (fp16 on a CPU: saying why)."""
    if name in PRECISIONS:
        return
    if name in ("fp16", "float16", "half") and torch.device(device).type == "cpu":
        raise ConfigError(FP16_CPU)
    raise ConfigError(f"precision {name!r}: give fp32, bf16 or auto")


def _cpu_answer(speedup: float | None) -> tuple[bool, str]:
    """(bf16 clearly faster?, why) on this CPU."""
    if speedup is None:
        speedup = lowp.forced_speedup()
    if speedup is None:
        flags = lowp.native_bf16_flags()
        if flags == []:
            return False, "this CPU has no avx512_bf16 or amx_bf16 flag: bf16 is slower here"
        speedup = lowp.measured_speedup("cpu")
        how = f"probe: bf16 matmul {speedup:.2f}x fp32"
    else:
        how = f"bf16 speed {speedup:.2f}x fp32 (given)"
    fast = speedup >= SPEEDUP_MIN
    return fast, f"{how}, {'at least' if fast else 'below'} {SPEEDUP_MIN}x"


def resolve(name: str, device: str | torch.device = "cpu", speedup: float | None = None) -> Choice:
    """The precision to run at for `name` (fp32, bf16 or auto) on `device`. speedup forces the
    CPU probe's answer (bf16 speed over fp32). bf16 asked for where it is not native: a CUDA
    device without bf16 is refused; on a CPU without native bf16 it runs (`Choice.native`
    False: the caller warns, `warn_slow`)."""
    check_name(name, device)
    dev = torch.device(device)
    if dev.type == "cuda":
        ok = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        if name == "bf16" and not ok:
            raise ConfigError(
                f"{dev} does not support bfloat16; use --precision fp32, or auto (which picks "
                "what the device supports)"
            )
        if name == "auto":
            why = "supports" if ok else "does not support"
            return Choice("bf16" if ok else "fp32", f"auto: {dev} {why} bfloat16")
        return Choice(name, "asked for")
    if dev.type != "cpu":
        if name == "bf16":
            raise ConfigError(f"bf16 is not supported on {dev.type}; use --precision fp32 or auto")
        return Choice("fp32", "asked for" if name == "fp32" else f"auto: {dev.type} runs fp32")
    if name == "fp32":
        return Choice("fp32", "asked for")
    fast, why = _cpu_answer(speedup)
    if name == "auto":
        return Choice("bf16" if fast else "fp32", f"auto: {why}")
    return Choice("bf16", f"asked for; {why}", native=fast or bool(lowp.native_bf16_flags()))


def warn_slow(choice: Choice) -> None:
    """One line (a SlowPrecisionWarning) when bf16 runs where it is not native."""
    if choice.bf16 and not choice.native:
        import warnings

        warnings.warn(
            "bf16 asked for on a CPU without native bfloat16 (no avx512_bf16 / amx_bf16): the "
            "SAE step emulates it and the model's forward is much slower than fp32; use "
            "--precision auto (fp32 here)",
            SlowPrecisionWarning,
            stacklevel=3,
        )


def for_command(name: str, device: str | torch.device = "cpu") -> Any:
    """A command's `model_precision` block for --precision `name`: resolved, warned about
    where bf16 is not native, and, when it runs bf16, said in one line on stderr (fp32 adds
    nothing to a command's output)."""
    choice = resolve(name, device)
    warn_slow(choice)
    if choice.bf16:
        print(choice.line(), file=sys.stderr)
    return model_precision(choice.name)


# ----- the model's forward -----------------------------------------------------------------

_MODEL: contextvars.ContextVar[str] = contextvars.ContextVar("saescope_model_precision")


def model_dtype() -> torch.dtype | None:
    """The autocast dtype of models' forward passes here (None: float32, no autocast)."""
    return torch.bfloat16 if _MODEL.get("fp32") == "bf16" else None


@contextlib.contextmanager
def model_precision(name: str) -> Iterator[None]:
    """Within the block, models that `follow` the ambient precision run their forward in
    `name` ("fp32" or "bf16"; resolve "auto" first)."""
    if name not in ("fp32", "bf16"):
        raise ConfigError(f"model precision {name!r}: give fp32 or bf16 (resolve auto first)")
    token = _MODEL.set(name)
    try:
        yield
    finally:
        _MODEL.reset(token)


def _device_type(model: nn.Module) -> str:
    p = next(model.parameters(), None)
    return p.device.type if p is not None else "cpu"


_FOLLOWING: dict[type, type] = {}


def follow(model: nn.Module) -> nn.Module:
    """Make the model's forward run under bf16 autocast while `model_precision("bf16")` is
    open (in place: its class becomes a subclass of the same name whose forward enters the
    autocast, so a deep copy follows too; a second call changes nothing). Returns the model."""
    base = type(model)
    if getattr(base, "_saescope_follows", False):
        return model
    if base not in _FOLLOWING:

        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            dtype = model_dtype()
            if dtype is None:
                return base.forward(self, *args, **kwargs)
            with torch.autocast(_device_type(self), dtype=dtype):
                return base.forward(self, *args, **kwargs)

        names = {"__module__": base.__module__, "__qualname__": base.__qualname__}
        _FOLLOWING[base] = type(base.__name__, (base,), {**names, "forward": forward,
                                                         "_saescope_follows": True})  # fmt: skip
    model.__class__ = _FOLLOWING[base]
    return model


def as_float32(t: Tensor) -> Tensor:
    """A bfloat16 or float16 activation widened to float32 (others unchanged)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def fp32_region(t: Tensor) -> contextlib.AbstractContextManager[Any]:
    """Autocast off on t's device within the block: an SAE spliced into a bf16 forward runs
    in float32."""
    if not torch.is_autocast_enabled(t.device.type):
        return contextlib.nullcontext()
    return torch.autocast(t.device.type, enabled=False)

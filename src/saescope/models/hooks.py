"""Hook points and splicing: the one place saescope reaches into a running model.

A hook point is a module path (`layers.2`), meaning the module's output; `layers.2.mlp:in` is
the module's input (a transcoder's x, with `layers.2.mlp` its y). `attached` runs the model with
functions called at hook points (the one place torch hooks are registered): observers
(harvest) and replacements; `spliced` replaces a module's output, its input (the module then
runs on the replacement), or the module's output by a function of its input (a transcoder
substituted for it). Harvest, downstream evaluation and steering all build on them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from saescope.errors import ConfigError, InputError
from saescope.precision import as_float32, fp32_region

Replacement = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class HookPoint:
    """A module path and which side of the module: its output, or its input (":in")."""

    path: str
    side: str = "out"

    @classmethod
    def parse(cls, spec: str) -> HookPoint:
        path, _, side = spec.partition(":")
        if side not in ("", "in", "out"):
            raise InputError(f"hook {spec!r}: the part after ':' must be 'in' or 'out'")
        return cls(path, side or "out")

    def __str__(self) -> str:
        return self.path if self.side == "out" else f"{self.path}:in"


@dataclass(frozen=True)
class HookPair:
    """The hook points of an SAE's data: x, and y for a transcoder (None: y is x)."""

    x: str
    y: str | None = None

    @property
    def specs(self) -> list[str]:
        """The hook points to collect: x, then y when it is another one."""
        return [self.x] + ([self.y] if self.y else [])

    def pick(self, rows: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(x, y) from activations collected under each hook's name."""
        x = rows[self.x]
        return x, (rows[self.y] if self.y else x)

    def replaces_module(self) -> bool:
        """Whether this is a transcoder pair `M:in` -> `M`, which can stand in for module M."""
        if self.y is None:
            return False
        x, y = HookPoint.parse(self.x), HookPoint.parse(self.y)
        return y.side == "out" and x == HookPoint(y.path, "in")


def hook_points(model: nn.Module) -> list[str]:
    """Every module path of the model: the names a hook can attach to."""
    return [name for name, _ in model.named_modules() if name]


def find_module(model: nn.Module, path: str) -> nn.Module:
    """The module at `path`; a wrong path gets the close matches."""
    modules = dict(model.named_modules())
    if path not in modules or not path:
        close = difflib.get_close_matches(path, hook_points(model), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"no module {path!r} in {type(model).__name__}{hint} "
            "(`saescope hooks MODEL` lists them)"
        )
    return modules[path]


class HookShapes(NamedTuple):
    """A hook point's module type and the shapes seen there: its output (`path`) and its
    input (`path:in`); None where that is not a floating-point tensor (token ids are no
    activation to train on) or the module did not run."""

    path: str
    module: str
    output: tuple[int, ...] | None
    input: tuple[int, ...] | None


def _shape(t: Any) -> tuple[int, ...] | None:
    return tuple(t.shape) if isinstance(t, Tensor) and t.is_floating_point() else None


def describe_hooks(model: nn.Module, ids: Tensor) -> list[HookShapes]:
    """Every hook point with its output and input shapes, from one forward pass on `ids`."""
    outputs: dict[str, tuple[int, ...] | None] = {}
    inputs: dict[str, tuple[int, ...] | None] = {}

    def on_input(path: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            try:
                inputs[path] = _shape(module_input(HookPoint(path, "in"), args, kwargs)[1])
            except InputError:  # called without a tensor: no `:in` hook point here
                inputs[path] = None

        return hook

    def on_output(path: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            outputs[path] = _shape(output)

        return hook

    modules = dict(model.named_modules())
    handles = []
    for p in hook_points(model):
        handles.append(modules[p].register_forward_pre_hook(on_input(p), with_kwargs=True))
        handles.append(modules[p].register_forward_hook(on_output(p)))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return [
        HookShapes(p, type(modules[p]).__name__, outputs.get(p), inputs.get(p))
        for p in hook_points(model)
    ]


def module_input(point: HookPoint, args: tuple, kwargs: dict[str, Any]) -> tuple[Any, Tensor]:
    """(where, tensor): the input a module was called with, its first positional argument
    (where = 0), else its `hidden_states` keyword, else its first tensor keyword (where =
    the keyword): Hugging Face modules are often called with keywords only."""
    if args and isinstance(args[0], Tensor):
        return 0, args[0]
    names = ["hidden_states", *kwargs]
    for name in names:
        if isinstance(kwargs.get(name), Tensor):
            return name, kwargs[name]
    raise InputError(f"hook {point}: the module was called without a tensor input")


Hook = Callable[[Tensor, Tensor], Tensor | None]
"""fn(x, clean) at a hook point: x the activation there (with `whole_module`, the module's
input), clean the value a replacement would take the place of (the module's output there, else
x itself); it returns the replacement, or None to leave the pass as it is."""


def _in_fp32(fn: Hook) -> Hook:
    """fn seeing a bf16 forward's activations as float32, with autocast off: whatever an SAE
    does in a hook (encode, splice, steer) runs in float32 in a bf16 forward too."""

    def run(x: Any, clean: Any) -> Any:
        if not isinstance(x, Tensor):
            return fn(x, clean)
        with fp32_region(x):
            return fn(as_float32(x), clean)

    return run


def _register(module: nn.Module, point: HookPoint, fn: Hook, whole_module: bool) -> Any:
    """The one place saescope registers a torch hook."""
    fn = _in_fp32(fn)
    if point.side == "out":
        return module.register_forward_hook(lambda _m, _args, out: fn(out, out))
    if whole_module:

        def on_module(_m: nn.Module, args: tuple, kwargs: dict[str, Any], out: Any) -> Any:
            return fn(module_input(point, args, kwargs)[1], out)

        return module.register_forward_hook(on_module, with_kwargs=True)

    def on_input(_m: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        where, x = module_input(point, args, kwargs)
        new = fn(x, x)
        if new is None:
            return None
        return ((new, *args[1:]), kwargs) if where == 0 else (args, {**kwargs, where: new})

    return module.register_forward_pre_hook(on_input, with_kwargs=True)


Before = Callable[[tuple, dict[str, Any]], None]
"""fn(args, kwargs) called with the model's own arguments before each forward pass of the
whole model (before any hook point fires): steering reads the KV cache's length there."""


@contextmanager
def attached(
    model: nn.Module,
    fns: dict[str, Hook],
    whole_module: bool = False,
    before: Before | None = None,
) -> Iterator[None]:
    """Within the block, every forward pass of the model calls fn (see `Hook`) at each hook
    point: `M` at module M's output, `M:in` at its input; with whole_module, an `M:in` fn sees
    M's input and its value replaces M's output (M still runs). Observers return None.
    `before`, if given, sees each call of the model itself first. The hooks are removed when
    the block ends, also on an exception."""
    handles = []
    try:
        if before is not None:
            handles.append(
                model.register_forward_pre_hook(lambda _m, a, kw: before(a, kw), with_kwargs=True)
            )
        for spec, fn in fns.items():
            point = HookPoint.parse(spec)
            module = find_module(model, point.path)
            handles.append(_register(module, point, fn, whole_module))
        yield
    finally:
        for h in handles:
            h.remove()


def spliced(
    model: nn.Module,
    replace: dict[str, Replacement],
    keep_first: bool = False,
    whole_module: bool = False,
) -> AbstractContextManager[None]:
    """Within the block, the model runs with each hook point's activation replaced by a
    function of it: a module's output (`M`), or its input (`M:in`; the module then runs on the
    replacement). whole_module: an `M:in` function's value, a function of M's input, becomes
    M's output (a transcoder substituted for M; M still runs, its own output is discarded).
    keep_first: position 0 keeps its clean value (it has no left context, and is dropped from
    harvested activations, so an SAE never saw it)."""

    def splice(fn: Replacement) -> Hook:
        def hook(x: Tensor, clean: Tensor) -> Tensor:
            new = fn(x).to(clean.dtype)
            return torch.cat((clean[:, :1], new[:, 1:]), dim=1) if keep_first else new

        return hook

    return attached(model, {spec: splice(fn) for spec, fn in replace.items()}, whole_module)

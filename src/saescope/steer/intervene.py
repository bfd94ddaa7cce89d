"""Interventions inside a running model, and `steering`, the context manager that applies them.

An intervention at a hook point changes the activation x at chosen positions. `FeatureEdits`
encodes x with an SAE, edits chosen features (`Edit`), decodes, and adds back the SAE's error
term: x' = decode(f') + (x - decode(f)) = x + (f' - f) W_dec, so whatever the SAE does not model
passes through unchanged, and with no feature changed x' is x exactly (bitwise: only the edited
features' decoder rows are ever added). `AddVector` adds alpha * v (a feature's decoder
direction, or any vector) with no encoder (activation addition).

Positions are absolute token positions: "all", "last" (each row's last real token in a forward
pass; in cached generation, every new token), a slice or a list of positions (negative ones
count from the end of the sequence so far). Inside generation with a KV cache a forward pass
sees only the new tokens: `steering` reads the cache's length before each pass of the whole
model, so position p means the same token cached or not. Position 0 is left alone by default
(`keep_first`): harvest drops it, so an SAE never saw it (in SmolLM2 it is the attention sink).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from saescope.data.outliers import OutlierRule
from saescope.errors import InputError
from saescope.models.hooks import HookPoint, attached, find_module
from saescope.saes import SAE
from saescope.steer.edits import Edit

Positions = str | slice | Sequence[int]


def check_positions(positions: Positions) -> Positions:
    """The positions, or a one-line error."""
    if isinstance(positions, str):
        if positions not in ("all", "last"):
            raise InputError(
                f"positions {positions!r}: give 'all', 'last', a slice or a list of positions"
            )
    elif isinstance(positions, slice):
        if positions.step not in (None, 1) and (positions.step or 0) <= 0:
            raise InputError(f"positions {positions}: a slice's step must be positive")
    elif not all(isinstance(p, int) and not isinstance(p, bool) for p in positions):
        raise InputError(f"positions {positions!r}: a list of positions must hold integers")
    return positions


@dataclass
class Intervention(abc.ABC):
    """A change at hook point `hook` (a module path; `M:in` is module M's input), at the
    chosen positions."""

    hook: str
    positions: Positions = "all"
    keep_first: bool = True

    def __post_init__(self) -> None:
        HookPoint.parse(self.hook)
        check_positions(self.positions)

    @abc.abstractmethod
    def delta(self, x: Tensor) -> Tensor:
        """The change to add to rows x (N, d) of the chosen positions."""

    def rows(self, x: Tensor) -> Tensor | None:
        """(N,) bool: which of the chosen rows x (N, d) this intervention may change (None:
        all of them)."""
        return None

    @abc.abstractmethod
    def check_width(self, d: int) -> None:
        """A one-line error when activations of width d cannot take this intervention."""


@dataclass
class FeatureEdits(Intervention):
    """Encode with `sae`, apply `edits`, decode, add back the error term. `outliers` (the
    run's rule): tokens beyond it keep their activation, as the SAE never trained on them."""

    sae: SAE | None = None
    edits: Sequence[Edit] = ()
    outliers: OutlierRule | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sae is None:
            raise InputError("FeatureEdits needs an SAE")
        self.edits = tuple(self.edits)
        for e in self.edits:
            e.check(self.sae.cfg.d_sae)

    def check_width(self, d: int) -> None:
        assert self.sae is not None
        if self.sae.cfg.d_in != d:
            raise InputError(
                f"the SAE takes d_in {self.sae.cfg.d_in} but hook {self.hook} has width {d}; "
                "give the hook the SAE was trained on"
            )

    def rows(self, x: Tensor) -> Tensor | None:
        return None if self.outliers is None else self.outliers.keep(x, x)

    def delta(self, x: Tensor) -> Tensor:
        sae = self.sae
        assert sae is not None
        ids = sorted({e.feature for e in self.edits})
        if not ids:
            return torch.zeros_like(x)
        p = sae.W_dec
        f = sae.encode(x.to(p.dtype))[:, ids]
        new = f.clone()
        for e in self.edits:
            j = ids.index(e.feature)
            new[:, j] = e.apply(new[:, j])
        return ((new - f) @ sae.W_dec[ids]).to(x.dtype)


@dataclass
class AddVector(Intervention):
    """x + alpha * vector at the chosen positions (activation addition)."""

    vector: Tensor = field(default_factory=lambda: torch.zeros(0))
    alpha: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.vector.dim() != 1 or self.vector.numel() == 0:
            raise InputError(f"a steering vector must be 1-D, got shape {tuple(self.vector.shape)}")
        if not torch.isfinite(self.vector).all() or not torch.isfinite(torch.tensor(self.alpha)):
            raise InputError("the steering vector and alpha must be finite")

    def check_width(self, d: int) -> None:
        if self.vector.numel() != d:
            raise InputError(
                f"the steering vector has {self.vector.numel()} entries but hook {self.hook} "
                f"has width {d}"
            )

    def delta(self, x: Tensor) -> Tensor:
        return (self.alpha * self.vector).to(x.device, x.dtype).expand_as(x)


def decoder_direction(sae: SAE, feature: int) -> Tensor:
    """Feature `feature`'s decoder row (the direction it writes), detached."""
    Edit(feature).check(sae.cfg.d_sae)
    return sae.W_dec[feature].detach().clone()


@dataclass
class _Pass:
    """What `steering` knows about the model's forward pass in progress."""

    offset: int = 0
    mask: Tensor | None = None  # (B, positions so far), 1 for real tokens


def _cache_length(args: tuple, kwargs: dict[str, Any]) -> int:
    """Positions already in the KV cache a model was called with (0 without one): saescope's
    own models (`cache=`, its `length`), Hugging Face's (`cache=` or `past_key_values=`, their
    `get_seq_length()`; else `cache_position=`)."""
    for cache in (kwargs.get("cache"), kwargs.get("past_key_values"), args[1:2] or None):
        if isinstance(cache, tuple):
            cache = cache[0]
        if cache is None:
            continue
        if hasattr(cache, "length"):
            return int(cache.length)
        if hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
    position = kwargs.get("cache_position")
    if isinstance(position, Tensor) and position.numel():
        return int(position.reshape(-1)[0])
    return 0


def _chosen(positions: Positions, pos: Tensor, last: Tensor) -> Tensor:
    """(B, T) bool: which of the absolute positions pos (T,) are chosen; last (B,) is each
    row's last real position."""
    if positions == "all":
        return torch.ones(last.shape[0], pos.shape[0], dtype=torch.bool)
    if positions == "last":
        return pos[None, :] == last[:, None]
    end = int(last.max()) + 1
    if isinstance(positions, slice):
        wanted = torch.arange(end)[positions]
    else:
        wanted = torch.tensor([p if p >= 0 else end + p for p in positions], dtype=torch.long)
    return torch.isin(pos, wanted)[None, :].expand(last.shape[0], -1)


def _selection(iv: Intervention, x: Tensor, state: _Pass) -> Tensor:
    """(B, T) bool: the positions of activation x (B, T, d) the intervention changes."""
    b, t = x.shape[0], x.shape[1]
    pos = torch.arange(state.offset, state.offset + t)
    mask = state.mask
    real = torch.ones(b, t, dtype=torch.bool)
    if mask is not None and mask.shape[0] == b and mask.shape[1] > state.offset:
        got = mask[:, state.offset : state.offset + t].bool().cpu()
        real[:, : got.shape[1]] = got
    if iv.positions == "last" and mask is not None and state.offset == 0 and mask.shape[1] == t:
        last = (mask.bool().cpu().long().cumsum(1).argmax(1)).long()
    else:
        last = torch.full((b,), state.offset + t - 1, dtype=torch.long)
    chosen = _chosen(iv.positions, pos, last) & real
    if iv.keep_first:
        chosen &= (pos != 0)[None, :]
    return chosen


def _apply(iv: Intervention, x: Tensor, state: _Pass) -> Tensor:
    """x with the intervention applied (a new tensor); x (B, T, d), or (N, d) rows of a
    model without positions (every row is chosen, `positions` must be "all")."""
    iv.check_width(x.shape[-1])
    if x.dim() == 2:
        if iv.positions != "all":
            raise InputError(
                f"hook {iv.hook} gives rows without positions; use positions='all' there"
            )
        chosen = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    elif x.dim() == 3:
        chosen = _selection(iv, x, state).to(x.device)
    else:
        raise InputError(f"hook {iv.hook}: activations of shape {tuple(x.shape)} not supported")
    rows = x[chosen]
    if rows.shape[0] == 0:
        return x
    allowed = iv.rows(rows)
    delta = iv.delta(rows)
    if allowed is not None:
        delta = delta * allowed[:, None].to(delta.dtype)
    out = x.clone()
    out[chosen] = rows + delta
    return out


def _hook_fn(ivs: list[Intervention], state: _Pass) -> Any:
    def fn(x: Tensor, _clean: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise InputError(f"hook {ivs[0].hook}: the activation there is not a tensor")
        for iv in ivs:
            x = _apply(iv, x, state)
        return x

    return fn


@contextmanager
def steering(
    model: nn.Module,
    interventions: Sequence[Intervention],
    attention_mask: Tensor | None = None,
) -> Iterator[None]:
    """Within the block every forward pass of the model (generation included, with or without
    a KV cache) runs with the interventions applied, several at once at several hook points
    (at one hook, in the order given). attention_mask (B, T), 1 for real tokens: padding is
    never changed (a model called with `attention_mask=` supplies it itself). The hooks are
    removed when the block ends, also on an exception."""
    by_hook: dict[str, list[Intervention]] = {}
    for iv in interventions:
        find_module(model, HookPoint.parse(iv.hook).path)
        by_hook.setdefault(iv.hook, []).append(iv)
    state = _Pass(mask=attention_mask)

    def before(args: tuple, kwargs: dict[str, Any]) -> None:
        state.offset = _cache_length(args, kwargs)
        given = kwargs.get("attention_mask")
        state.mask = given if isinstance(given, Tensor) else attention_mask

    fns = {hook: _hook_fn(ivs, state) for hook, ivs in by_hook.items()}
    with attached(model, fns, before=before):
        yield

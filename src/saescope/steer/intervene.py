"""Interventions inside a running model, and `steering`, the context manager that applies them.

An intervention at a hook point changes the activation x at chosen positions. `FeatureEdits`
encodes x with an SAE, edits chosen features (`Edit`), decodes, and adds back the SAE's error
term: x' = decode(f') + (x - decode(f)) = x + (f' - f) W_dec, so whatever the SAE does not model
passes through unchanged, and with no feature changed x' is x exactly (bitwise: only the edited
features' decoder rows are ever added). `AddVector` adds alpha * v (a feature's decoder
direction, or any vector) with no encoder (activation addition).

Positions are token positions within each row, padding not counted (a mask says which tokens
are real, left or right padding alike): "all", "last" (each row's last real token in a forward
pass), a slice or a list of positions (negative ones count back from each row's last real
token so far). Inside generation with a KV cache a forward pass sees only the new tokens:
`steering` reads the cache's length before each pass of the whole model, so a non-negative
position p means the same token cached or not, and cached generation equals uncached for "all"
and for non-negative slices and lists. "last" and negative positions are relative to the pass:
uncached, each step steers the current last token only and recomputes the earlier ones
unsteered; cached, the earlier steps' steered keys and values stay. Position 0 is left alone by
default (`keep_first`): harvest drops it, so an SAE never saw it (in SmolLM2 it is the
attention sink).
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
        cfg = self.sae.cfg
        if cfg.d_out != cfg.d_in:
            raise InputError(
                f"the SAE is a transcoder (d_in {cfg.d_in}, d_out {cfg.d_out}): its decoder "
                "writes another hook's activations; steer with an SAE whose output is its input"
            )
        if self.sae.training:
            raise InputError(
                "the SAE is in training mode (its codes may depend on the whole batch); "
                "call sae.eval() before steering with it"
            )
        if self.outliers is not None and not isinstance(self.outliers, OutlierRule):
            raise InputError(
                f"outliers must be an OutlierRule or None, got {type(self.outliers).__name__}; "
                "a run that records only a factor has no rule to steer with"
            )

    def check_width(self, d: int) -> None:
        assert self.sae is not None
        if self.sae.cfg.d_in != d:
            raise InputError(
                f"the SAE takes d_in {self.sae.cfg.d_in} but hook {self.hook} has width {d}; "
                "give the hook the SAE was trained on"
            )

    def rows(self, x: Tensor) -> Tensor | None:
        return None if self.outliers is None else self.outliers.keep(x, x).to(x.device)

    def delta(self, x: Tensor) -> Tensor:
        sae = self.sae
        assert sae is not None
        ids = sorted({e.feature for e in self.edits})
        if not ids:
            return torch.zeros_like(x)
        w = sae.W_dec
        f = sae.encode(x.to(w.device, w.dtype))[:, ids]
        new = f.clone()
        for e in self.edits:
            j = ids.index(e.feature)
            new[:, j] = e.apply(new[:, j])
        return ((new - f) @ w[ids]).to(x.device, x.dtype)


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


def token_positions(b: int, t: int, state: _Pass, device: torch.device) -> tuple[Tensor, Tensor]:
    """(pos, real), both (B, T), for the T positions of a forward pass after state.offset
    cached ones: each position's index among its row's real tokens (padding, left or right,
    does not count) and whether it is a real token. Without a mask every token is real."""
    mask = state.mask
    end = state.offset + t
    if mask is None or mask.shape[0] != b:
        pos = torch.arange(state.offset, end, device=device).expand(b, t)
        return pos, torch.ones(b, t, dtype=torch.bool, device=device)
    full = mask[:, :end].to(device=device, dtype=torch.bool)
    if full.shape[1] < end:  # generation beyond a prompt's mask: the new tokens are real
        more = torch.ones(b, end - full.shape[1], dtype=torch.bool, device=device)
        full = torch.cat((full, more), dim=1)
    count = full.long().cumsum(1)
    return (count - 1)[:, state.offset :], full[:, state.offset :]


def _chosen(positions: Positions, pos: Tensor, last: Tensor) -> Tensor:
    """(B, T) bool: which token positions pos (B, T) are chosen; last (B, 1) is each row's
    last real token so far (negative positions count back from it)."""
    if positions == "all":
        return torch.ones_like(pos, dtype=torch.bool)
    if positions == "last":
        return pos == last
    if isinstance(positions, slice):
        rows = [torch.arange(int(n) + 1, device=pos.device)[positions] for n in last[:, 0]]
        return torch.stack([torch.isin(p, w) for p, w in zip(pos, rows, strict=True)])
    wanted = torch.tensor(list(positions), dtype=torch.long, device=pos.device)
    wanted = torch.where(wanted < 0, last + 1 + wanted, wanted)  # (B, n)
    return (pos[:, :, None] == wanted[:, None, :]).any(-1)


def _selection(iv: Intervention, x: Tensor, state: _Pass) -> Tensor:
    """(B, T) bool: the positions of activation x (B, T, d) the intervention changes: real
    tokens, by their index among their row's real tokens, never the first with keep_first."""
    pos, real = token_positions(x.shape[0], x.shape[1], state, x.device)
    if iv.positions == "all" and not iv.keep_first:
        return real
    last = (pos.masked_fill(~real, -1)).amax(1, keepdim=True)
    chosen = _chosen(iv.positions, pos, last) & real
    return chosen & (pos != 0) if iv.keep_first else chosen


def edited_positions(
    iv: Intervention, x: Tensor, mask: Tensor | None = None, offset: int = 0
) -> Tensor:
    """(B, T) bool: the positions of x (B, T, d) that `iv` changes in a pass after `offset`
    cached positions (mask (B, positions), 1 for real tokens): its positions among the real
    tokens, and for `FeatureEdits` only the tokens within its outlier rule. Attribution and
    ablation use it so that they score exactly the edits `steering` makes."""
    chosen = _selection(iv, x, _Pass(offset, mask))
    allowed = iv.rows(x[chosen])
    if allowed is not None:
        chosen = chosen.clone()
        chosen[chosen.clone()] = allowed
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
        chosen = _selection(iv, x, state)
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

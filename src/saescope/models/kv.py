"""The key/value cache of generation: each attention layer's keys and values of the positions
already seen, so that a step runs the model on the new tokens only.

`length` counts the positions already cached and changes only when a forward pass has run
through every layer (`advance`): read before or during a pass, it is the absolute position of
the pass's first new token. A pass that stops part-way (an exception from a hook) leaves
nothing behind: each layer's store is cut to `length` before the new keys are appended.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from saescope.errors import InputError


class KVCache:
    """Keys and values (B, H_kv, positions, d_head) of each layer, for one batch of rows."""

    def __init__(self, n_layers: int) -> None:
        self.length = 0
        self.keys: list[Tensor | None] = [None] * n_layers
        self.values: list[Tensor | None] = [None] * n_layers

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append the new positions' k, v (B, H_kv, T_new, d_head) to layer's store; returns
        every position's keys and values (B, H_kv, length + T_new, d_head)."""
        old_k, old_v = self.keys[layer], self.values[layer]
        if old_k is not None and old_v is not None and self.length:
            if old_k.shape[0] != k.shape[0]:
                raise InputError(
                    f"the cache holds {old_k.shape[0]} rows, the pass has {k.shape[0]}; "
                    "start another batch with a new cache (model.new_cache())"
                )
            k = torch.cat((old_k[:, :, : self.length], k), dim=2)
            v = torch.cat((old_v[:, :, : self.length], v), dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def advance(self, new: int) -> None:
        """Count `new` positions as cached: called once a pass has run through every layer."""
        self.length += new


def attend(q: Tensor, k: Tensor, v: Tensor, cached: int, scale: float | None = None) -> Tensor:
    """Causal attention of the new queries q (B, H, T_new, d) over k, v (B, H, cached + T_new,
    d): SDPA's own causal mask when nothing is cached, else `causal_mask`."""
    if cached == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    mask = causal_mask(q.shape[2], cached, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def causal_mask(new: int, cached: int, device: torch.device) -> Tensor | None:
    """The attention mask (new, cached + new) of `new` queries after `cached` positions: each
    sees every cached key and the new ones up to itself (True = attend). None where SDPA needs
    no mask: one new token sees everything."""
    if new == 1:
        return None
    return torch.ones(new, cached + new, dtype=torch.bool, device=device).tril(diagonal=cached)

"""A Llama decoder as a plain torch module: loads a Hugging Face `LlamaForCausalLM` folder
(config.json + model.safetensors) without importing transformers, whose own import takes
about 2.5 s on a small CPU. Module paths are the transformers ones (`model.layers.3`,
`model.layers.3.self_attn`, `model.layers.3.mlp`, `model.norm`), so hook names carry over;
`forward(ids)` gives the logits. tests/test_hf_models.py checks it against transformers.
`forward(ids, cache)` with a `KVCache` (`new_cache()`) runs the new positions only, after the
cached ones (generation: `generate.py`); hooks then see (B, T_new, d).

Covered: RMSNorm, rotary embeddings on half-split pairs ("default" rope type), grouped-query
attention (SDPA, causal), SwiGLU MLP, tied or separate output embeddings. Anything else in
the config (rope scaling, biases, sliding windows) is refused: load those with transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from saescope.errors import ConfigError
from saescope.models.glassllm import RMSNorm  # the same norm: x / rms(x) * weight
from saescope.models.kv import KVCache, attend


class Linear(nn.Module):
    """y = x W^T with W left uninitialised: the weights are always loaded (and torch's own
    Linear would spend a second initialising 135M parameters first)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_out, d_in))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class Embedding(nn.Module):
    def __init__(self, vocab: int, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab, d))

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding on the pairs (x[i], x[i + d/2]); x (B, H, T, d_head)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: dict[str, Any], index: int) -> None:
        super().__init__()
        self.index = index  # this layer's place in a KVCache
        d, self.heads = cfg["hidden_size"], cfg["num_attention_heads"]
        self.kv = cfg["num_key_value_heads"]
        self.d_head = cfg.get("head_dim") or d // self.heads
        self.q_proj = Linear(d, self.heads * self.d_head)
        self.k_proj = Linear(d, self.kv * self.d_head)
        self.v_proj = Linear(d, self.kv * self.d_head)
        self.o_proj = Linear(self.heads * self.d_head, d)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None) -> Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.d_head).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv, self.d_head).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv, self.d_head).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        start = 0
        if cache is not None:
            start = cache.length
            k, v = cache.update(self.index, k, v)  # (B, kv, start + t, d_head)
        rep = self.heads // self.kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = attend(q, k, v, start)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = Linear(d, hidden)
        self.up_proj = Linear(d, hidden)
        self.down_proj = Linear(hidden, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: dict[str, Any], index: int) -> None:
        super().__init__()
        d, eps = cfg["hidden_size"], cfg["rms_norm_eps"]
        self.input_layernorm = RMSNorm(d, eps)
        self.self_attn = Attention(cfg, index)
        self.post_attention_layernorm = RMSNorm(d, eps)
        self.mlp = MLP(d, cfg["intermediate_size"])

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.embed_tokens = Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg["num_hidden_layers"]))
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


class Llama(nn.Module):
    """ids (B, T) -> next-token logits (B, T, vocab); cached + T <= max_position_embeddings."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.config_dict = cfg
        self.max_position_embeddings = int(cfg["max_position_embeddings"])
        self.model = Decoder(cfg)
        self.lm_head = Linear(cfg["hidden_size"], cfg["vocab_size"])
        if cfg.get("tie_word_embeddings", False):
            self.lm_head.weight = self.model.embed_tokens.weight
        d_head = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        theta = float(_rope_theta(cfg))
        steps = torch.arange(0, d_head, 2, dtype=torch.float64, device="cpu")
        inv = 1.0 / theta ** (steps / d_head)
        self._inv_freq = inv.float()

    def new_cache(self) -> KVCache:
        """An empty key/value cache for `forward(ids, cache)`."""
        return KVCache(len(self.model.layers))

    def forward(self, ids: Tensor, cache: KVCache | None = None) -> Tensor:
        """Logits of the new positions; with a cache, ids are the tokens after its `length`."""
        cached = cache.length if cache is not None else 0
        if ids.dim() != 2 or cached + ids.shape[1] > self.max_position_embeddings:
            past = f" after {cached} cached" if cached else ""
            raise ConfigError(
                f"ids must be (batch, positions) with at most {self.max_position_embeddings} "
                f"positions, got {tuple(ids.shape)}{past}"
            )
        positions = torch.arange(cached, cached + ids.shape[1], dtype=torch.float32)
        angles = torch.outer(positions, self._inv_freq).to(ids.device)
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos(), angles.sin()
        x = self.model.embed_tokens(ids)
        for block in self.model.layers:
            x = block(x, cos, sin, cache)
        if cache is not None:
            cache.advance(ids.shape[1])
        return self.lm_head(self.model.norm(x))


class JSONTokenizer:
    """A `tokenizer.json` read by the `tokenizers` library (no transformers import): `encode`
    without special tokens, `decode`, `vocab_size`, as saescope uses a tokenizer."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode([int(i) for i in ids]))

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size())


def _rope_theta(cfg: dict[str, Any]) -> float:
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling")
    if rope.get("rope_type", "default") != "default" or scaling:
        raise ConfigError("this Llama uses rope scaling; load it with transformers (load_folder)")
    return rope.get("rope_theta", cfg.get("rope_theta", 10000.0))


def supported(cfg: dict[str, Any]) -> bool:
    """Whether this port covers the config (else use transformers)."""
    plain = not cfg.get("attention_bias") and not cfg.get("mlp_bias")
    act = cfg.get("hidden_act", "silu") == "silu" and cfg.get("pretraining_tp", 1) == 1
    rope = cfg.get("rope_parameters") or {}
    default_rope = rope.get("rope_type", "default") == "default" and not cfg.get("rope_scaling")
    return cfg.get("architectures") == ["LlamaForCausalLM"] and plain and act and default_rope


def load(folder: Path) -> Llama:
    """The model of a LlamaForCausalLM folder (config.json, model.safetensors), float32."""
    cfg = json.loads((folder / "config.json").read_text())
    if not supported(cfg):
        raise ConfigError(f"{folder}: not a plain LlamaForCausalLM; load it with transformers")
    model = Llama(cfg)
    state = load_file(folder / "model.safetensors")
    if cfg.get("tie_word_embeddings", False):
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    if cfg.get("tie_word_embeddings", False):
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()

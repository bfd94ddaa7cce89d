"""GlassLM as a hookable torch module: the 0.85M-parameter, 4-layer decoder-only language
model of the PyPI package `glassllm` (MIT), trained on Lewis Carroll, whose weights ship inside
the package (no download). The package's own forward is NumPy; this port reads the same
weights and matches its logits (tests/test_models.py checks <= 1e-4).

Architecture (glassllm 0.1.0): token embedding E (vocab 1024, d_model 128), tied to the output;
4 pre-norm blocks, each x + attn(RMSNorm(x)) then x + mlp(RMSNorm(x)); attention with 4 query
heads sharing 2 key/value heads (GQA) and rotary position embeddings on interleaved pairs;
SwiGLU MLP (hidden int(8 d / 3) = 341); RMSNorm eps 1e-6; contexts of at most 128 tokens.

Hook points are module paths: `layers.2` (the residual stream after block 2), `layers.2.attn`
and `layers.2.mlp` (the attention and MLP outputs that block 2 adds to it; the MLP's input is
`layers.2.norm2`'s output).

`forward(ids, cache)` with a `KVCache` (`new_cache()`) runs only the new positions: rotary
positions start at `cache.length`, the new keys and values are appended, and the new queries
attend every cached position (`generate.py`); hooks then see (B, T_new, d).

The package's tokenizer is pure-Python BPE: the default corpus (5.7 M characters) takes ~10 s
to encode. `load` gives it a disk cache for long texts (`LONG_TEXT` characters and more): the
ids of each such text are kept in the user cache folder (`tokens/`, written atomically, keyed
by the tokenizer's merges and the text's SHA-256), so every later process reads them back.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saescope.atomic import atomic_write_bytes
from saescope.errors import InputError
from saescope.models.kv import KVCache, attend
from saescope.native import cache_dir


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding on interleaved pairs (x[2i], x[2i + 1]); x (B, H, T, d_k)."""
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(
        self, d: int, n_heads: int, n_kv_heads: int, max_len: int, base: float, index: int
    ) -> None:
        super().__init__()
        self.index = index  # this layer's place in a KVCache
        self.n_heads, self.n_kv_heads, self.d_k = n_heads, n_kv_heads, d // n_heads
        self.W_Q = nn.Parameter(torch.empty(d, n_heads * self.d_k))
        self.W_K = nn.Parameter(torch.empty(d, n_kv_heads * self.d_k))
        self.W_V = nn.Parameter(torch.empty(d, n_kv_heads * self.d_k))
        self.W_O = nn.Parameter(torch.empty(n_heads * self.d_k, d))
        theta = base ** (-2.0 * torch.arange(self.d_k // 2, dtype=torch.float64) / self.d_k)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float64), theta)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def _heads(self, x: Tensor, heads: int) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, heads, self.d_k).transpose(1, 2)  # (B, H, T, d_k)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        b, t, _ = x.shape
        start = cache.length if cache is not None else 0  # position of the first new token
        cos, sin = self.cos[start : start + t], self.sin[start : start + t]
        q = _rotate(self._heads(x @ self.W_Q, self.n_heads), cos, sin)
        k = _rotate(self._heads(x @ self.W_K, self.n_kv_heads), cos, sin)
        v = self._heads(x @ self.W_V, self.n_kv_heads)
        if cache is not None:
            k, v = cache.update(self.index, k, v)  # (B, H_kv, start + t, d_k)
        repeats = self.n_heads // self.n_kv_heads  # each key/value head serves `repeats` queries
        k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
        mixed = attend(q, k, v, start, scale=1 / math.sqrt(self.d_k))
        return mixed.transpose(1, 2).reshape(b, t, -1) @ self.W_O


class MLP(nn.Module):
    """SwiGLU: (silu(x W1) * x W3) W2."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.W1 = nn.Parameter(torch.empty(d, hidden))
        self.W3 = nn.Parameter(torch.empty(d, hidden))
        self.W2 = nn.Parameter(torch.empty(hidden, d))

    def forward(self, x: Tensor) -> Tensor:
        return (F.silu(x @ self.W1) * (x @ self.W3)) @ self.W2


class Block(nn.Module):
    def __init__(self, cfg: Any, index: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.norm1 = RMSNorm(d, cfg.eps)
        self.attn = Attention(d, cfg.n_heads, cfg.n_kv_heads, cfg.max_len, cfg.rope_base, index)
        self.norm2 = RMSNorm(d, cfg.eps)
        self.mlp = MLP(d, int(8 * d / 3))

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), cache)
        return x + self.mlp(self.norm2(x))


class GlassLM(nn.Module):
    """ids (B, T) -> next-token logits (B, T, vocab); cached + T <= max_len (128)."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.max_len = cfg.max_len
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm_f = RMSNorm(cfg.d_model, cfg.eps)

    def new_cache(self) -> KVCache:
        """An empty key/value cache for `forward(ids, cache)`."""
        return KVCache(len(self.layers))

    def forward(self, ids: Tensor, cache: KVCache | None = None) -> Tensor:
        """Logits of the new positions; with a cache, ids are the tokens after its `length`."""
        cached = cache.length if cache is not None else 0
        if ids.dim() != 2 or cached + ids.shape[1] > self.max_len:
            past = f" after {cached} cached" if cached else ""
            raise InputError(
                f"ids must be (batch, positions) with at most {self.max_len} positions, "
                f"got {tuple(ids.shape)}{past}; split the text into shorter contexts"
            )
        x = self.embed(ids)
        for block in self.layers:
            x = block(x, cache)
        if cache is not None:
            cache.advance(ids.shape[1])
        return self.norm_f(x) @ self.embed.weight.t()  # tied embeddings


# the package's parameter names -> this module's
_RENAME = {"E": "embed.weight", "norm_f.gamma": "norm_f.weight"}
_PARTS = {"norm1.gamma": "norm1.weight", "norm2.gamma": "norm2.weight", "ffn.": "mlp."}


def _our_name(name: str) -> str:
    if name in _RENAME:
        return _RENAME[name]
    name = name.replace("blocks.", "layers.", 1)
    for old, new in _PARTS.items():
        name = name.replace(old, new)
    return name


def load(lang: str = "en") -> tuple[GlassLM, Any]:
    """(model in eval mode, the package's tokenizer) for glassllm's `lang` weights ("en":
    Lewis Carroll; "pt": Machado de Assis)."""
    import glassllm

    ref, tokenizer = glassllm.load_pretrained(lang)
    model = GlassLM(ref.cfg)
    params = ref.named_parameters().items()
    state = {_our_name(k): torch.from_numpy(p.data).float() for k, p in params}
    model.load_state_dict(state, strict=True)
    return model.eval(), with_disk_cache(tokenizer)


LONG_TEXT = 20_000
"""Texts at least this long (in characters) are encoded once per machine (`with_disk_cache`)."""


def with_disk_cache(tokenizer: Any) -> Any:
    """The package's tokenizer, its `encode` of a text of `LONG_TEXT` characters or more read
    from the user cache folder when that text was encoded before (the same ids: computed by
    the same tokenizer, keyed by its version, alphabet and merges and by the text's SHA-256)."""
    version = importlib.metadata.version("glassllm")
    spec = json.dumps([version, tokenizer.alphabet, tokenizer.merges], ensure_ascii=False)
    name = f"glassllm-{hashlib.sha256(spec.encode()).hexdigest()[:16]}"
    tokenizer.encode = _CachedEncode(name, tokenizer.encode)
    return tokenizer


class _CachedEncode:
    """`encode` with the disk cache for long texts (a class, not a closure: it pickles)."""

    def __init__(self, name: str, plain: Callable[[str], list[int]]) -> None:
        self.name, self.plain = name, plain

    def __call__(self, text: str) -> list[int]:
        if len(text) < LONG_TEXT:
            return self.plain(text)
        return cached_ids(self.name, text, self.plain)


def cached_ids(name: str, text: str, encode: Callable[[str], list[int]]) -> list[int]:
    """encode(text), read from `tokens/{name}-{sha256 of text}.npy` in the user cache folder
    when there; else computed and saved there (atomically; a cache folder that cannot be
    written only means the text is encoded again next time)."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    path = cache_dir() / "tokens" / f"{name}-{digest}.npy"
    try:
        return np.load(path, allow_pickle=False).tolist()
    except (OSError, ValueError, EOFError):
        pass  # not cached yet (or unreadable): encode and (re)write it
    ids = encode(text)
    buf = io.BytesIO()
    np.save(buf, np.asarray(ids, dtype=np.int32))
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError:
        pass
    return ids

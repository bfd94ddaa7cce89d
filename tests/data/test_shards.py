"""The cache's stored dtypes: float32, bfloat16 and float16 written, read back as float32 by
every reader; float16's range refused with the hook named; caches written before the dtype
was recorded read as they always did."""

import json

import pytest
import torch

from saescope.data.cache import MANIFEST, ActivationCache, CacheBatches, CacheWriter
from saescope.data.shards import CACHE_DTYPES, FLOAT16_MAX, header
from saescope.data.stream import on_device
from saescope.errors import ConfigError, InputError

D, CONTEXT = 24, 10


def _batches(n_contexts: int, scale: float = 3.0, seed: int = 0):
    """Harvest-shaped batches of one context each: {hook: (CONTEXT, D), tokens, ...}."""
    gen = torch.Generator().manual_seed(seed)
    for c in range(n_contexts):
        yield {
            "resid": torch.randn(CONTEXT, D, generator=gen) * scale,
            "tokens": torch.randint(0, 500, (CONTEXT,), generator=gen),
            "positions": torch.arange(1, CONTEXT + 1),
            "contexts": torch.full((CONTEXT,), c),
        }


def _write(path, dtype, n_contexts=12, shard_contexts=5, **kw):
    writer = CacheWriter(path, {"test": "shards"}, shard_contexts, dtype)
    rows = []
    for b in _batches(n_contexts, **kw):
        rows.append(b["resid"])
        writer.add(b, 1)
    writer.flush()
    return torch.cat(rows)


@pytest.mark.parametrize("name", list(CACHE_DTYPES))
def test_each_dtype_round_trips_as_float32(name, tmp_path):
    rows = _write(tmp_path / "c", name)
    want = rows.to(CACHE_DTYPES[name]).float()  # what storing it rounds to
    cache = ActivationCache(tmp_path / "c")
    assert cache.dtype_name == name and cache.dtype == CACHE_DTYPES[name]
    stored = header(tmp_path / "c" / cache.shards[0]["file"])
    assert stored["resid"].torch_dtype == CACHE_DTYPES[name]
    assert stored["tokens"].torch_dtype == torch.int64  # the indices stay int64
    head = cache.head("resid", rows.shape[0])
    assert head.dtype == torch.float32 and torch.equal(head, want)
    mapped = cache.tensor("resid", 1, cache.rows("resid", 1))  # memory-mapped, as stored
    first = cache.shard_rows[0]
    assert mapped.dtype == CACHE_DTYPES[name]
    assert torch.equal(mapped.float(), want[first : first + mapped.shape[0]])
    if name != "float32":  # rounded, by at most bfloat16's / float16's half-ulp
        assert not torch.equal(head, rows)
        rel = 2.0**-8 if name == "bfloat16" else 2.0**-11
        assert bool(((head - rows).abs() <= rel * rows.abs() + 1e-7).all())
    # the shuffling reader: float32 batches, each a row of the stored cache
    reader = CacheBatches(cache, "resid", batch_size=40, seed=1, chunk_rows=7)
    x, y = reader.batch(0)
    assert x.dtype == torch.float32 and y is x
    assert bool((x[:, None] == want[None]).all(-1).any(1).all())
    # as stored (for a GPU to convert after the copy): the same rows, converted by on_device
    raw, _ = reader.stored().batch(0)
    assert raw.dtype == CACHE_DTYPES[name]
    assert torch.equal(on_device((raw, raw), "cpu")[0], x)


def test_half_precision_halves_the_activation_bytes(tmp_path):
    _write(tmp_path / "f32", "float32")
    _write(tmp_path / "bf16", "bfloat16")
    size = {
        k: sum(p.stat().st_size for p in (tmp_path / k).glob("shard-*")) for k in ("f32", "bf16")
    }
    meta = 3 * 8 * 12 * CONTEXT  # tokens, positions, contexts: int64 either way
    assert size["f32"] - size["bf16"] == pytest.approx(2 * D * 12 * CONTEXT, abs=4096)
    assert size["bf16"] > 2 * D * 12 * CONTEXT + meta - 1


def test_float16_refuses_values_beyond_its_range(tmp_path):
    writer = CacheWriter(tmp_path / "c", {"test": "shards"}, 5, "float16")
    batch = next(_batches(1))
    batch["resid"][3, 5] = -2 * FLOAT16_MAX
    with pytest.raises(InputError) as e:
        writer.add(batch, 1)
    msg = str(e.value)
    assert "\n" not in msg and "resid" in msg and "131008" in msg and "bfloat16" in msg
    CacheWriter(tmp_path / "b", {"test": "shards"}, 5, "bfloat16").add(batch, 1)  # fits


def test_a_cache_from_before_dtypes_reads_unchanged_and_keeps_its_dtype(tmp_path):
    path = tmp_path / "c"
    rows = _write(path, None)
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["dtype"] == "float32"
    del manifest["dtype"]  # as every cache written before harvest --dtype
    (path / MANIFEST).write_text(json.dumps(manifest))
    cache = ActivationCache(path)
    assert cache.dtype == torch.float32
    assert torch.equal(cache.head("resid", rows.shape[0]), rows)
    assert CacheWriter(path, {"test": "shards"}, 5).dtype == torch.float32  # grows as it was
    with pytest.raises(ConfigError, match="--dtype float32"):
        CacheWriter(path, {"test": "shards"}, 5, "bfloat16")
    with pytest.raises(ConfigError, match="float32, bfloat16, float16"):
        CacheWriter(tmp_path / "new", {"test": "shards"}, 5, "int8")

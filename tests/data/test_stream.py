"""Batch streams: `IndexedBatches` (batch i a pure function of i, `iter_from`, per-draw
generators), `RowBatches`, and every stream class of saescope saying d_in, d_out, y_is_x and
tokens_per_batch consistently with the batches it gives."""

import itertools
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from saescope import precision
from saescope.activations import ModelBatches
from saescope.data import (
    ActivationFile,
    ArticleTask,
    ArticleTaskConfig,
    CacheBatches,
    CorrelatedTask,
    CorrelatedTaskConfig,
    HierarchicalTask,
    HierarchicalTaskConfig,
    IndexedBatches,
    RowBatches,
)
from saescope.data import stream as stream_module
from saescope.data.cache import CacheWriter
from saescope.data.stream import device_stream


class Noise(IndexedBatches):
    """The smallest stream: batch i is noise from generator(i)."""

    def __init__(self, seed: int = 0, batch_size: int = 3) -> None:
        self.seed, self.batch_size = seed, batch_size

    @property
    def d_in(self) -> int:
        return 2

    def batch(self, i: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(self.batch_size, 2, generator=self.generator(i))
        return x, x


def test_iter_from_k_is_iter_without_its_first_k():
    s = Noise(seed=1)
    whole = [x for x, _ in itertools.islice(iter(s), 8)]
    for k in (0, 1, 5):
        tail = [x for x, _ in itertools.islice(s.iter_from(k), 8 - k)]
        assert all(torch.equal(a, b) for a, b in zip(tail, whole[k:], strict=True))


def test_iter_from_computes_no_batch_before_start():
    asked = []

    class Counted(Noise):
        def batch(self, i):
            asked.append(i)
            return super().batch(i)

    next(Counted().iter_from(1000))
    assert asked == [1000]


def test_generators_are_reproducible_and_differ_by_draw_and_seed():
    s = Noise(seed=7)

    def draw(stream, i):
        return torch.rand(4, generator=stream.generator(i))

    assert torch.equal(draw(s, 3), draw(s, 3)) and torch.equal(draw(s, 3), draw(Noise(7), 3))
    assert not torch.equal(draw(s, 3), draw(s, 4))
    assert not torch.equal(draw(s, 3), draw(Noise(8), 3))
    huge = Noise(seed=2**62)  # seeds past 2**63 / 1_000_003 wrap instead of overflowing
    assert draw(huge, 1).shape == (4,) and not torch.equal(draw(huge, 1), draw(huge, 2))


@pytest.mark.parametrize("prefetch", [False, True])
def test_device_stream_gives_the_batches_from_start_read_ahead_or_not(prefetch):
    """Reading one batch ahead on a worker thread (what CUDA does) changes no batch; on the
    CPU float32 batches pass through uncopied, y still x; a plain iterable is skipped into."""
    s = Noise()
    got = list(itertools.islice(device_stream(s, 3, "cpu", prefetch), 4))
    for i, (x, y) in enumerate(got, start=3):
        assert torch.equal(x, s.batch(i)[0]) and y is x
    plain = [s.batch(i)[0] for i in range(6)]
    again = list(device_stream(iter(plain), 2, "cpu", prefetch))
    assert [b[0] for b in again] == plain[2:]  # the very tensors: nothing copied


def test_device_stream_makes_half_precision_rows_float32():
    x = torch.randn(5, 2).bfloat16()
    y = torch.randn(5, 3).half()
    (gx, gy), (hx, hy) = device_stream([(x, x), (x, y)], 0, "cpu")
    assert gx.dtype == gy.dtype == hx.dtype == hy.dtype == torch.float32
    assert gy is gx and torch.equal(gx, x.float()) and torch.equal(hy, y.float())


class _Halves(Noise):
    """Noise whose `stored()` stream gives bfloat16 rows, recording the thread of each read."""

    def __init__(self, threads: list[str], half: bool = False) -> None:
        super().__init__()
        self.threads, self.half = threads, half

    def stored(self) -> "_Halves":
        return _Halves(self.threads, half=True)

    def batch(self, i: int) -> tuple[Tensor, Tensor]:
        self.threads.append(threading.current_thread().name)
        x = super().batch(i)[0]
        x = x.bfloat16() if self.half else x
        return x, x


def test_the_cuda_path_pins_reads_ahead_and_sends_the_stored_rows(monkeypatch):
    """With torch's copy to the GPU stood in for (no GPU here): batches are read as stored
    (bfloat16) on the worker thread, pinned, sent with non_blocking=True and arrive float32."""
    sent, pinned, threads = [], [], []
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: False)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(1) or self.clone())

    def arrive(t: Tensor, device: str, non_blocking: bool = False) -> Tensor:
        sent.append((t.dtype, device, non_blocking))
        return t.float()

    monkeypatch.setattr(stream_module, "_arrive", arrive)
    devices = []
    monkeypatch.setattr(torch.cuda, "set_device", devices.append)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    s = _Halves(threads)
    got = list(itertools.islice(device_stream(s, 2, "cuda"), 3))
    for i, (x, y) in enumerate(got, start=2):
        assert y is x and x.dtype == torch.float32
        assert torch.equal(x, Noise().batch(i)[0].bfloat16().float())
    assert sent == [(torch.bfloat16, "cuda", True)] * 3 and len(pinned) >= 3  # + one ahead
    assert threads and all(t.startswith("saescope-prefetch") for t in threads)
    assert devices == [3]  # the worker is on the loop's CUDA device


def test_the_read_ahead_thread_keeps_the_model_precision():
    """A stream read ahead on the worker thread (a model harvesting on the fly) sees the
    ambient model precision of the loop that opened it, not the default fp32."""
    seen = []

    class Seen(Noise):
        def batch(self, i):
            seen.append(precision.model_dtype())
            return super().batch(i)

    with precision.model_precision("bf16"):
        list(itertools.islice(device_stream(Seen(), 0, "cpu", prefetch=True), 3))
    assert len(seen) >= 3 and set(seen) == {torch.bfloat16}


def test_the_defaults_describe_an_sae_stream():
    s = Noise(batch_size=5)
    assert (s.d_in, s.d_out, s.y_is_x, s.tokens_per_batch) == (2, 2, True, 5)


def test_row_batches_draw_rows_with_replacement():
    rows = torch.arange(10.0).view(5, 2)
    rb = RowBatches(rows, batch_size=12, seed=3)  # more rows than the matrix has
    x, y = rb.batch(0)
    assert x.shape == (12, 2) and y is x
    assert all(r in rows.tolist() for r in x.tolist())
    assert len({tuple(r) for r in x.tolist()}) < 12  # repeats: drawn with replacement
    assert torch.equal(RowBatches(rows, 12, seed=3).batch(4)[0], rb.batch(4)[0])
    assert not torch.equal(RowBatches(rows, 12, seed=4).batch(4)[0], rb.batch(4)[0])
    assert not torch.equal(rb.batch(1)[0], rb.batch(2)[0])
    assert (rb.d_in, rb.d_out, rb.y_is_x, rb.tokens_per_batch) == (2, 2, True, 12)


# ----- every stream class says what it gives ------------------------------------------------------


class _Toy(nn.Module):
    """ids -> a 2-D embedding, then a Linear to 3 dimensions."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(64, 2)
        self.proj = nn.Linear(2, 3)

    def forward(self, ids):
        return self.proj(self.embed(ids))


def _cache(path, hooks: dict[str, int]):
    w = CacheWriter(path, {"model": "toy"}, shard_contexts=2)
    g = torch.Generator().manual_seed(0)
    for c in range(5):  # 5 contexts of 4 rows, shards of 2 contexts
        rows = {h: torch.randn(4, d, generator=g) for h, d in hooks.items()}
        rows |= {
            "tokens": torch.arange(4),
            "positions": torch.arange(1, 5),
            "contexts": torch.full((4,), c),
        }
        w.add(rows, 1)
    w.flush()
    return path


def _build(kind: str, tmp_path) -> tuple[IndexedBatches, int, int, bool, int]:
    """A small stream and the (d_in, d_out, y_is_x, rows per batch) it must report."""
    if kind == "article":
        return ArticleTask(ArticleTaskConfig(d_in=5, n_features=7), 16), 5, 5, True, 16
    if kind == "correlated":
        cfg = CorrelatedTaskConfig(d_in=6, n_features=10, mean_active=2)
        return CorrelatedTask(cfg, 8, seed=1), 6, 6, True, 8
    if kind == "hierarchical":
        cfg = HierarchicalTaskConfig(d_in=7, n_parents=2, n_children=2, n_independent=3)
        return HierarchicalTask(cfg, 9), 7, 7, True, 9
    if kind == "file":
        np.save(tmp_path / "a.npy", np.random.default_rng(0).normal(size=(20, 4)).astype("f4"))
        return ActivationFile(tmp_path / "a.npy", 6), 4, 4, True, 6
    if kind == "file_xy":
        save_file({"x": torch.randn(20, 4), "y": torch.randn(20, 2)}, tmp_path / "a.safetensors")
        return ActivationFile(tmp_path / "a.safetensors", 50), 4, 2, False, 20
    if kind == "cache":
        path = _cache(tmp_path / "c", {"h": 3})
        return CacheBatches(path, "h", batch_size=7, chunk_rows=3), 3, 3, True, 7
    if kind == "cache_xy":
        path = _cache(tmp_path / "c", {"h:in": 3, "h": 5})
        return CacheBatches(path, "h:in", "h", batch_size=100), 3, 5, False, 20
    if kind == "rows":
        return RowBatches(torch.randn(10, 8), 11), 8, 8, True, 11
    ids = torch.arange(48).view(6, 8)
    if kind == "model":
        return ModelBatches(_Toy(), ids, "embed", batch_size=14), 2, 2, True, 14
    assert kind == "model_xy"
    return ModelBatches(_Toy(), ids, "proj:in", "proj", batch_size=20), 2, 3, False, 14


KINDS = [
    "article",
    "correlated",
    "hierarchical",
    "file",
    "file_xy",
    "cache",
    "cache_xy",
    "rows",
    "model",
    "model_xy",
]


@pytest.mark.parametrize("kind", KINDS)
def test_every_stream_says_what_it_gives(kind, tmp_path):
    stream, d_in, d_out, y_is_x, rows = _build(kind, tmp_path)
    assert isinstance(stream, IndexedBatches)
    assert (stream.d_in, stream.d_out, stream.y_is_x, stream.tokens_per_batch) == (
        d_in,
        d_out,
        y_is_x,
        rows,
    )
    for i in (0, 1, 7):
        x, y = stream.batch(i)
        assert x.shape == (stream.tokens_per_batch, stream.d_in)
        assert y.shape == (stream.tokens_per_batch, stream.d_out)
        assert x.dtype == y.dtype == torch.float32
        assert (y is x) == stream.y_is_x
        assert torch.equal(next(stream.iter_from(i))[0], x)  # batch i, however it is reached

"""The activation cache: shards and manifest, memory-mapped reads, the shuffling reader, a
harvest killed and resumed, training from a cache resumed bitwise."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from saescope.activations import ModelBatches, harvest_to_cache, text_contexts
from saescope.cli import main as cli_main
from saescope.data.cache import MANIFEST, ActivationCache, CacheBatches, CacheWriter
from saescope.errors import ConfigError, FormatError
from saescope.models import load_model
from saescope.models.harvest import harvest

TEXT = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having "
    "nothing to do: once or twice she had peeped into the book her sister was reading, but it "
    "had no pictures or conversations in it, 'and what is the use of a book,' thought Alice "
    "'without pictures or conversations?' "
) * 30


@pytest.fixture(scope="module")
def glass():
    return load_model("glassllm")


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "alice.txt"
    p.write_text(TEXT)
    return p


def _contexts(glass, text_file, context=32):
    model, tok = glass
    return text_contexts(model, tok, [text_file], context)


def _rows_among(x: torch.Tensor, rows: torch.Tensor) -> bool:
    """Whether every row of x is one of the rows."""
    return bool((x[:, None, :] == rows[None]).all(-1).any(1).all())


def test_cache_holds_what_harvest_gives_and_maps_it(glass, text_file, tmp_path):
    model, _ = glass
    contexts, fp = _contexts(glass, text_file)
    hooks = ["layers.1", "layers.1.mlp:in"]
    harvest_to_cache(model, contexts, hooks, tmp_path / "c", {"fingerprint": fp}, 4, 6, False)
    cache = ActivationCache(tmp_path / "c")
    assert cache.hooks == {"layers.1": 128, "layers.1.mlp:in": 128}
    assert cache.n_rows == contexts.shape[0] * 31
    assert len(cache.shards) == -(-contexts.shape[0] // 8)  # 6 contexts fill at the 2nd batch
    direct = next(harvest(model, contexts, hooks, batch_size=contexts.shape[0]))
    got = torch.cat([torch.from_numpy(np.array(cache.rows("layers.1", s))) for s in range(3)])
    assert isinstance(cache.rows("layers.1", 0), np.memmap)
    torch.testing.assert_close(got, direct["layers.1"][: got.shape[0]])
    assert torch.equal(cache.head("tokens", 100), direct["tokens"][:100])
    assert torch.equal(
        cache.head("positions", 40)[:32], torch.cat([torch.arange(1, 32), torch.tensor([1])])
    )
    ctx_of_row = cache.head("contexts", cache.n_rows)
    assert torch.equal(ctx_of_row, torch.arange(contexts.shape[0]).repeat_interleave(31))


def test_shuffling_reader_covers_each_row_once_per_epoch_and_is_a_function_of_i(
    glass, text_file, tmp_path
):
    model, _ = glass
    contexts, fp = _contexts(glass, text_file)
    harvest_to_cache(
        model, contexts, ["layers.0"], tmp_path / "c", {"fingerprint": fp}, 4, 4, False
    )
    cache = ActivationCache(tmp_path / "c")
    all_rows = cache.head("layers.0", cache.n_rows)
    # Tiny chunks and windows so an epoch spans many windows and batches cross them.
    rd = CacheBatches(cache, "layers.0", batch_size=31, seed=3, buffer_mb=0.05, chunk_rows=50)
    assert rd.window_rows < cache.n_rows // 4
    epoch = torch.cat([rd.batch(i)[0] for i in range(rd.per_epoch)])
    assert epoch.shape[0] == rd.per_epoch * 31 == cache.n_rows  # 31 divides the row count
    key = lambda t: sorted(map(tuple, t[:, :4].tolist()))  # noqa: E731
    assert key(epoch) == key(all_rows)  # every row exactly once
    assert not torch.equal(epoch, all_rows)  # and shuffled
    again = CacheBatches(cache, "layers.0", batch_size=31, seed=3, buffer_mb=0.05, chunk_rows=50)
    for i in (rd.per_epoch + 5, 7, 0):  # any order, across an epoch boundary
        assert torch.equal(again.batch(i)[0], rd.batch(i)[0])
    nxt = torch.cat([rd.batch(rd.per_epoch + i)[0] for i in range(rd.per_epoch)])
    assert not torch.equal(nxt, epoch) and key(nxt) == key(epoch)  # epoch 2: a new order


def test_transcoder_pairs_stay_aligned(glass, text_file, tmp_path):
    model, _ = glass
    contexts, fp = _contexts(glass, text_file)
    hooks = ["layers.2.mlp:in", "layers.2.mlp"]
    harvest_to_cache(model, contexts, hooks, tmp_path / "c", {"fingerprint": fp}, 8, 8, False)
    rd = CacheBatches(tmp_path / "c", *hooks, batch_size=64, buffer_mb=0.1, chunk_rows=40)
    x, y = rd.batch(3)
    with torch.no_grad():
        torch.testing.assert_close(model.layers[2].mlp(x), y, atol=1e-5, rtol=1e-5)


def test_a_different_source_is_refused_and_missing_hooks_are_named(glass, text_file, tmp_path):
    model, _ = glass
    contexts, fp = _contexts(glass, text_file)
    harvest_to_cache(model, contexts[:8], ["layers.0"], tmp_path / "c", {"f": fp}, 4, 4, False)
    with pytest.raises(ConfigError, match="holds a cache of"):
        harvest_to_cache(model, contexts, ["layers.1"], tmp_path / "c", {"f": fp}, 4, 4, False)
    with pytest.raises(ConfigError, match=r"not in the cache .* it holds layers.0"):
        CacheBatches(tmp_path / "c", "layers.3")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an activation cache"):
        CacheWriter(tmp_path / "other", {})


def test_growing_a_cache_appends_only_the_new_contexts(glass, text_file, tmp_path):
    model, _ = glass
    contexts, fp = _contexts(glass, text_file)
    src = {"fingerprint": fp}
    harvest_to_cache(model, contexts[:8], ["layers.0"], tmp_path / "c", src, 4, 4, False)
    first = (tmp_path / "c" / "shard-000000.safetensors").stat().st_mtime_ns
    w = harvest_to_cache(model, contexts, ["layers.0"], tmp_path / "c", src, 4, 4, False)
    assert w.contexts_done == contexts.shape[0]
    assert (tmp_path / "c" / "shard-000000.safetensors").stat().st_mtime_ns == first
    whole = next(harvest(model, contexts, ["layers.0"], batch_size=contexts.shape[0]))
    torch.testing.assert_close(
        ActivationCache(tmp_path / "c").head("layers.0", 10**6), whole["layers.0"]
    )


@pytest.mark.slow
def test_a_killed_harvest_resumes_and_never_reads_a_half_written_shard(tmp_path):
    """SIGKILL `saescope harvest` mid-way, leave a torn shard file behind, resume: the cache
    equals an uninterrupted harvest."""
    text = tmp_path / "t.txt"
    text.write_text(TEXT * 6)
    cmd = [
        sys.executable,
        "-m",
        "saescope",
        "harvest",
        "--model",
        "glassllm",
        "--hooks",
        "layers.1",
        "--text",
        str(text),
        "--context",
        "16",
        "--batch-size",
        "2",
        "--shard-contexts",
        "4",
    ]
    proc = subprocess.Popen(
        [*cmd, "--out", str(tmp_path / "k")], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        m = tmp_path / "k" / MANIFEST
        if m.is_file() and len(json.loads(m.read_text())["shards"]) >= 3:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads((tmp_path / "k" / MANIFEST).read_text())["shards"]
    assert 3 <= len(done) and done[-1]["n_contexts"] == 4
    torn = tmp_path / "k" / f"shard-{len(done):06d}.safetensors"
    torn.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a')  # what a crash could leave
    stale = tmp_path / "k" / f".{torn.name}.x1.tmp"
    stale.write_bytes(b"partial")
    cache = ActivationCache(tmp_path / "k")  # reads only the listed shards
    assert len(cache.shards) == len(done)
    assert cache.n_rows == sum(s["n_contexts"] for s in done) * 15  # 15 rows per context
    x, y = CacheBatches(cache, "layers.1", batch_size=16).batch(0)
    assert x.shape == (16, 128) and y is x and torch.isfinite(x).all()
    assert _rows_among(x, cache.head("layers.1", cache.n_rows))  # rows of the listed shards
    subprocess.run([*cmd, "--out", str(tmp_path / "k")], check=True, capture_output=True)
    # The uninterrupted harvest, in this process (same thread count as the child).
    assert cli_main([*cmd[3:], "--out", str(tmp_path / "ref")]) == 0
    a, b = ActivationCache(tmp_path / "k"), ActivationCache(tmp_path / "ref")
    assert not stale.exists()
    assert a.n_rows == b.n_rows and len(a.shards) == len(b.shards)
    for s in range(len(a.shards)):
        ta = load_file(tmp_path / "k" / a.shards[s]["file"])
        tb = load_file(tmp_path / "ref" / b.shards[s]["file"])
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


class _Interrupted:
    """A stream that dies after `n` batches (as a killed run would), then resumes whole."""

    def __init__(self, stream, n):
        self.stream, self.n = stream, n

    def iter_from(self, start):
        for i, b in enumerate(self.stream.iter_from(start)):
            if self.n is not None and i == self.n:
                self.n = None
                raise KeyboardInterrupt
            yield b


@pytest.mark.parametrize("source", ["cache", "model"])
def test_training_on_a_cache_or_a_model_resumes_bitwise(glass, text_file, tmp_path, source):
    from saescope.saes import make_sae
    from saescope.training import TrainConfig, train

    model, _ = glass
    contexts, fp = _contexts(glass, text_file)
    if source == "cache":
        harvest_to_cache(model, contexts, ["layers.1"], tmp_path / "c", {"f": fp}, 4, 4, False)
        stream = CacheBatches(
            tmp_path / "c", "layers.1", batch_size=62, buffer_mb=0.1, chunk_rows=50
        )
    else:
        stream = ModelBatches(model, contexts, "layers.1", batch_size=62)
    cfg = TrainConfig(steps=30, checkpoint_every=10, init_samples=124, progress=False)
    runs = {}
    for name, n in (("whole", None), ("killed", 17)):
        torch.manual_seed(0)
        sae = make_sae({"architecture": "topk", "d_in": 128, "d_sae": 256, "k": 8})
        wrapped = _Interrupted(stream, n)
        try:
            train(sae, wrapped, cfg, tmp_path / name)
        except KeyboardInterrupt:
            train(sae, wrapped, cfg, tmp_path / name, resume=True)
        runs[name] = load_file(tmp_path / name / "sae_weights.safetensors")
    assert all(torch.equal(runs["whole"][k], runs["killed"][k]) for k in runs["whole"])


def test_a_harvest_killed_before_its_first_manifest_resumes(glass, text_file, tmp_path):
    model, _ = glass
    contexts, fp = _contexts(glass, text_file)
    out = tmp_path / "c"
    out.mkdir()
    (out / ".shard-000000.safetensors.k2j3.tmp").write_bytes(b"torn")  # killed mid-write
    (out / "shard-000000.safetensors").write_bytes(b"renamed, never listed")
    harvest_to_cache(model, contexts, ["layers.0"], out, {"f": fp}, 4, 4, False)
    cache = ActivationCache(out)
    assert cache.n_rows == contexts.shape[0] * 31 and not list(out.glob(".*.tmp"))
    rows = cache.head("layers.0", cache.n_rows)
    whole = next(harvest(model, contexts, ["layers.0"], batch_size=contexts.shape[0]))
    torch.testing.assert_close(rows, whole["layers.0"])  # the stray files left no trace
    x, y = CacheBatches(cache, "layers.0", batch_size=31).batch(0)
    assert x.shape == (31, 128) and y is x
    assert _rows_among(x, rows)


def test_a_missing_or_torn_shard_is_named(glass, text_file, tmp_path):
    model, _ = glass
    contexts, fp = _contexts(glass, text_file)
    harvest_to_cache(model, contexts, ["layers.0"], tmp_path / "c", {"f": fp}, 4, 4, False)
    (tmp_path / "c" / "shard-000001.safetensors").unlink()
    with pytest.raises(FormatError, match=r"shard shard-000001\.safetensors of the manifest is"):
        ActivationCache(tmp_path / "c")
    with pytest.raises(FormatError, match="is missing"):
        harvest_to_cache(model, contexts, ["layers.0"], tmp_path / "c", {"f": fp}, 4, 4, False)
    (tmp_path / "c" / "shard-000001.safetensors").write_bytes(b"\x01")
    with pytest.raises(FormatError, match="missing or unreadable shard"):
        CacheBatches(tmp_path / "c", "layers.0", batch_size=31, chunk_rows=31).batch(7)


def test_huge_seeds_do_not_overflow(glass, text_file, tmp_path):
    model, _ = glass
    contexts, fp = _contexts(glass, text_file)
    harvest_to_cache(model, contexts, ["layers.0"], tmp_path / "c", {"f": fp}, 4, 4, False)
    x, _ = CacheBatches(tmp_path / "c", "layers.0", batch_size=31, seed=2**31 - 1).batch(5)
    assert x.shape == (31, 128)
    assert (
        ModelBatches(model, contexts, "layers.0", batch_size=62, seed=2**62).batch(3)[0].shape[0]
        == 62
    )


def test_resuming_on_a_grown_cache_is_refused(glass, text_file, tmp_path):
    from saescope.saes import make_sae
    from saescope.training import TrainConfig, train

    model, _ = glass
    contexts, fp = _contexts(glass, text_file)
    harvest_to_cache(model, contexts[:8], ["layers.1"], tmp_path / "c", {"f": fp}, 4, 4, False)
    cfg = TrainConfig(steps=30, checkpoint_every=10, init_samples=62, progress=False)
    stream = CacheBatches(tmp_path / "c", "layers.1", batch_size=31)
    sae = make_sae({"architecture": "topk", "d_in": 128, "d_sae": 256, "k": 8})
    with pytest.raises(KeyboardInterrupt):
        train(sae, _Interrupted(stream, 15), cfg, tmp_path / "r", metadata={"rows": 248})
    harvest_to_cache(model, contexts, ["layers.1"], tmp_path / "c", {"f": fp}, 4, 4, False)
    grown = CacheBatches(tmp_path / "c", "layers.1", batch_size=31)
    with pytest.raises(ConfigError, match="cannot resume: rows is 248 in the run, 2790 here"):
        train(sae, grown, cfg, tmp_path / "r", resume=True, metadata={"rows": grown.cache.n_rows})

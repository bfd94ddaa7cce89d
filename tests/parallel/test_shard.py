"""A rank's share of each batch: rows [r N / W, (r + 1) N / W) of batch i, read through the
source's `part` (a file, a cache, a model on the fly), the shares in rank order being batch i."""

import pytest
import torch

from saescope.activations import ModelBatches
from saescope.data import ActivationCache
from saescope.data.cache import CacheBatches
from saescope.data.files import ActivationFile
from saescope.data.stream import RowBatches
from saescope.errors import ConfigError
from saescope.parallel import Shard
from tests.parallel import ranks


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard")
    ranks.write_data(root, rows=1024)
    return root


def _check_shares(stream, size, steps=(0, 1, 5)):
    for i in steps:
        x, y = stream.batch(i)
        parts = [Shard(stream, r, size).batch(i) for r in range(size)]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert all((p[1] is p[0]) == (y is x) for p in parts)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)


@pytest.mark.parametrize("size", [2, 3])
def test_file_and_cache_shares_are_the_batch(data, size):
    _check_shares(ActivationFile(data / "acts.npy", batch_size=100, seed=1), size)
    cache = CacheBatches(ActivationCache(data / "cache"), ranks.HOOK, batch_size=100, seed=1)
    _check_shares(cache, size)
    _check_shares(RowBatches(torch.randn(50, 4), 10), size)  # the default part: a slice


def test_model_shares_run_only_their_contexts(glass):
    model = glass[0]
    ids = torch.randint(
        model.embed.num_embeddings, (12, 9), generator=torch.Generator().manual_seed(0)
    )
    stream = ModelBatches(model, ids, "layers.0", batch_size=24, seed=3)  # 3 contexts of 8 rows
    for size in (2, 3):  # shares that split a context, and that do not
        for i in (0, 2):
            x, _ = stream.batch(i)
            got = torch.cat([Shard(stream, r, size).batch(i)[0] for r in range(size)])
            assert torch.allclose(got, x, atol=1e-6, rtol=1e-6)


def test_a_shard_says_the_whole_stream(data):
    stream = ActivationFile(data / "acts.npy", batch_size=100, seed=1)
    shard = Shard(stream, 1, 2)
    assert (shard.d_in, shard.batch_size, shard.tokens_per_batch) == (stream.d_in, 100, 100)
    assert shard.batch(0)[0].shape == (50, stream.d_in)
    with pytest.raises(ConfigError, match="smaller than the 4 processes"):
        Shard(ActivationFile(data / "acts.npy", batch_size=3), 0, 4)

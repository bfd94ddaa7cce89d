"""The loop's data-parallel hooks, in one process: a `Mirror` group stands for processes that
all hold the same rows, so training on x with it must equal training on the whole batch
[x; x; ...] alone (gradients, AuxK's variance, BatchTopK's N*k over the whole batch and its
threshold, dead-latent counters, resampling, the outlier rule, the final tail, the log rows)."""

import json

import pytest
import torch

from saescope.data.stream import IndexedBatches
from saescope.saes import make_sae
from saescope.training import TrainConfig, train
from saescope.training.group import SOLO, Share


class Mirror:
    """`size` processes holding the same rows, simulated in one (rank 0)."""

    rank = 0

    def __init__(self, size: int) -> None:
        self.size = size

    def sum_(self, t):
        return t.mul_(self.size)

    def min_(self, t):
        return t

    def gather(self, t):
        return torch.cat([t] * self.size)

    def broadcast_(self, t):
        return t

    def kth_largest(self, candidates, k):
        return torch.cat([candidates] * self.size).topk(k).values.min()


class Rows(IndexedBatches):
    """Batch i: fixed random rows (a few of them outliers), each repeated `times` times."""

    def __init__(self, n: int, times: int = 1) -> None:
        self.batch_size, self.seed, self.times = n * times, 0, times

    @property
    def d_in(self) -> int:
        return 12

    def batch(self, i):
        g = self.generator(i)
        x = torch.randn(self.batch_size // self.times, 12, generator=g).relu() + 0.5
        x[:2] *= 30
        x = torch.cat([x] * self.times)
        return x, x


ARCHS = {"topk": {"k": 3}, "batchtopk": {"k": 3}, "matryoshka": {"k": 3}}
ARCHS |= {"relu": {}, "jumprelu": {}, "gated": {}}


def _trained(arch, stream, group, out):
    torch.manual_seed(0)
    sae = make_sae({"architecture": arch, "d_in": 12, "d_sae": 48, **ARCHS[arch]})
    cfg = TrainConfig(steps=12, lr=3e-3, init_samples=200, log_every=5, progress=False)
    return train(sae, stream, cfg, out, group=group).saes[0].state_dict()


@pytest.mark.parametrize("arch", ARCHS)
def test_a_mirrored_group_trains_the_whole_batch(arch, tmp_path):
    whole = _trained(arch, Rows(128, times=2), None, tmp_path / "one")
    shared = _trained(arch, Rows(128), Mirror(2), tmp_path / "two")
    for k, v in whole.items():
        rel = (shared[k] - v).abs().max() / v.abs().max().clamp_min(1e-12)
        assert rel <= 1e-5, (k, float(rel))
    rows = [json.loads(r) for r in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    got = [json.loads(r) for r in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows, got, strict=True):  # the whole batch's numbers in the log
        assert a.keys() == b.keys() and a["tokens"] == b["tokens"]
        assert a["outliers"] == b["outliers"] > 0
        for key in ("loss", "l0", "mse", "explained_variance", "dead_fraction"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key


def test_a_share_counts_the_whole_batch():
    share = Share.of(Mirror(3), rows=10, kept=8, bad=False, stop=None)
    assert (share.rows, share.kept_total, share.set_aside, share.bad, share.stop) == (
        30,
        24,
        6,
        False,
        0,
    )
    assert share.weight == pytest.approx(1 / 3)
    assert Share.of(Mirror(2), 4, 4, True, 15).bad and Share.of(Mirror(2), 4, 4, True, 15).stop


def test_one_process_asks_nothing():
    t = torch.arange(4.0)
    assert SOLO.sum_(t) is t and SOLO.gather(t) is t and SOLO.broadcast_(t) is t
    assert float(SOLO.kth_largest(torch.tensor([3.0, 1.0, 2.0]), 2)) == 2.0

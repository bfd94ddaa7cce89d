"""The sharded SAE on one process (`SoloLatents`): the sharded code path trains the same SAE
as the plain loop, every architecture it shards, dead latents and AuxK included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saescope.data.files import ActivationFile
from saescope.saes import make_sae
from saescope.training import TrainConfig, train
from saescope.training.latents import ShardedSAE
from saescope.training.latents_loop import train_latents
from saescope.training.shards import SoloLatents
from tests.parallel import ranks
from tests.parallel.test_ddp import _close


def _rows(run: Path) -> list[str]:
    return (run / "metrics.jsonl").read_text().splitlines()


@pytest.mark.parametrize(
    ("arch", "fields"),
    [
        ("topk", {"k": 4, "k_aux": 8}),
        ("batchtopk", {"k": 4, "k_aux": 8}),
        ("relu", {"l1_coef": 10.0}),
        ("jumprelu", {}),
    ],
)
@pytest.mark.filterwarnings("ignore::saescope.saes.batchtopk.ThresholdWarning")  # 1,024 rows
def test_one_rank_of_the_sharded_path_trains_the_plain_loops_sae(tmp_path, arch, fields):
    ranks.write_data(tmp_path, rows=1024)
    cfg = TrainConfig(
        steps=16,
        lr=3e-2 if arch == "relu" else 3e-3,  # relu: fast enough to kill latents (resampling)
        init_samples=256,
        log_every=4,
        dead_tokens=64,
        resample_every=3,  # between the log rows: they see the dead latents
        grad_clip=1.0,
        progress=False,
    )
    got = []
    for sharded in (False, True):
        torch.manual_seed(0)
        sae = make_sae({"architecture": arch, "d_in": 16, "d_sae": 64, **fields})
        batches = ActivationFile(tmp_path / "acts.npy", 64, 1)
        out = tmp_path / str(int(sharded))
        if sharded:
            got.append(train_latents(sae, batches, SoloLatents(), cfg, out))
        else:
            got.append(train(sae, batches, cfg, out))
    _close(got[1].saes[0].state_dict(), got[0].saes[0].state_dict(), arch)
    dead = [[json.loads(r)["dead_fraction"] for r in _rows(tmp_path / str(s))] for s in (0, 1)]
    assert dead[0] == pytest.approx(dead[1])
    assert max(dead[0]) > 0 or arch == "jumprelu"  # latents died in the run
    for key in ("loss", "l0", "dead_fraction"):
        assert got[1].final_metrics[0][key] == pytest.approx(got[0].final_metrics[0][key], 1e-5)


def test_the_shard_is_the_unsharded_sae_s_slice():
    torch.manual_seed(0)
    sae = make_sae({"architecture": "jumprelu", "d_in": 8, "d_sae": 10})
    group = type("G", (SoloLatents,), {"size": 3, "rank": 2})()
    shard = ShardedSAE(sae, group).local
    assert (shard.cfg.d_sae, shard.W_enc.shape) == (4, (8, 4))  # latents 6..9
    assert torch.equal(shard.W_enc, sae.W_enc[:, 6:])
    assert torch.equal(shard.W_dec, sae.W_dec[6:])
    assert torch.equal(shard.log_threshold, sae.log_threshold[6:])
    assert torch.equal(shard.b_dec, sae.b_dec)


def test_batchtopk_keeps_exactly_n_k_codes_when_rows_repeat():
    torch.manual_seed(0)
    sae = make_sae({"architecture": "batchtopk", "d_in": 8, "d_sae": 16, "k": 2.5})
    x = torch.randn(5, 8).repeat(2, 1) * 3  # every value twice; N·k = 25 splits a tie
    want, got = sae.loss(x, x), ShardedSAE(sae, SoloLatents()).loss(x, x)
    assert int((got.f != 0).sum()) == int((want.f != 0).sum()) == 25
    kept = [o.f.detach() for o in (got, want)]
    assert torch.equal(kept[0][kept[0] != 0].sort().values, kept[1][kept[1] != 0].sort().values)
    assert float(got.terms["mse"].detach()) == pytest.approx(float(want.terms["mse"].detach()))

"""Latent sharding with real processes (gloo, 2 ranks, one thread each): the SAE sharded over
2 ranks equals the one trained unsharded in one process after 50 steps (AuxK, dead latents
and resampling at work), each rank holds half the parameters and Adam moments, a run stopped
part-way resumes to the same SAE, and another world size is refused in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saescope import SAE
from saescope.data.files import ActivationFile
from saescope.data.stream import RowBatches
from saescope.errors import ConfigError
from saescope.saes import make_sae
from saescope.training import TrainConfig
from saescope.training.checkpoint import read_meta
from saescope.training.config import default_lr
from saescope.training.latents_loop import shard_file, train_latents
from saescope.training.shards import SoloLatents
from tests.parallel import ranks
from tests.parallel.test_ddp import _close, _ranks
from tests.training import latents_ranks as lr

RANKS = Path(__file__).with_name("latents_ranks.py")


def _numel(tensors: dict[str, torch.Tensor], prefix: str) -> int:
    return sum(v.numel() for k, v in tensors.items() if k.startswith(prefix))


def _per_latent(tensors: dict[str, torch.Tensor], prefix: str) -> int:
    """Numbers of a checkpoint's per-latent tensors (all but b_dec and step counters)."""
    skip = ("b_dec", ".step")
    return sum(
        v.numel()
        for k, v in tensors.items()
        if k.startswith(prefix) and not any(s in k for s in skip)
    )


@pytest.mark.slow
def test_an_sae_sharded_over_two_ranks_is_the_unsharded_sae(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    ranks.write_data(data)
    procs = _ranks(lambda r: [sys.executable, str(RANKS), str(data), str(out)], tmp_path)
    alone = {a: lr.train_case(a, data, tmp_path / "alone" / a, None) for a in lr.ARCHS}
    for r, p in enumerate(procs):
        assert p.wait(timeout=300) == 0, (tmp_path / f"rank{r}.err").read_text()
    for case in lr.CASES:  # topk-resume: against topk uninterrupted
        arch = case.split("-")[0]
        one = alone[arch]
        got = SAE.load(out / case)
        _close(got.state_dict(), one.saes[0].state_dict(), case)
        logged = json.loads((out / case / "cfg.json").read_text())["metadata"]["final_metrics"]
        for key in ("loss", "l0", "mse", "explained_variance", "dead_fraction"):
            want = one.final_metrics[0][key]
            assert logged[key] == pytest.approx(want, rel=1e-5, abs=1e-7), (case, key)
        assert one.final_metrics[0]["dead_fraction"] > 0, case  # latents died: AuxK worked
        # each rank's checkpoint holds its half of the parameters and of Adam's moments
        whole = load_file(tmp_path / "alone" / arch / "checkpoint.safetensors")
        shards = [load_file(out / case / "checkpoint.safetensors")]
        shards.append(load_file(shard_file(out / case, 1, lr.STEPS)))
        assert len(list((out / case / "latents").iterdir())) == 1  # step 25's shard is gone
        d_sae = got.cfg.d_sae
        for kind in ("sae0.", "opt0."):
            full = _per_latent(whole, kind)
            assert full > 0
            for r, shard in enumerate(shards):
                held = d_sae * (r + 1) // 2 - d_sae * r // 2
                assert _per_latent(shard, kind) * d_sae == full * held, (case, kind, r)
            assert _numel(shards[0], "sae0.local.b_dec") == got.cfg.d_in  # b_dec: whole
    # on one process: refused, in one line
    sae = make_sae({"architecture": "topk", "d_in": 16, "d_sae": lr.D_SAE, **lr.ARCHS["topk"]})
    batches = ActivationFile(data / "acts.npy", lr.BATCH, 1)
    with pytest.raises(ConfigError, match=r"on 2 process\(es\) and this is 1; the world"):
        train_latents(sae, batches, SoloLatents(), lr.config(), out / "topk", resume=True)
    rows = (out / "topk-resume" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(r)["step"] for r in rows]
    assert steps == [10, 20, 30, 40, 50]  # the stopped run's rows past step 25 replaced


def test_latents_mode_runs_fp32_and_says_so(tmp_path, monkeypatch, capsys):
    """bf16 is refused in one line; auto (here as on a GPU: bf16 clearly faster) settles to
    fp32 with a note, and the run records fp32 (and the rate it used)."""
    monkeypatch.setenv("SAESCOPE_BF16_SPEEDUP", "4")  # auto would pick bf16 here
    rows = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))

    def run(precision: str) -> None:
        sae = make_sae({"architecture": "topk", "d_in": 8, "d_sae": 16, "k": 2})
        cfg = TrainConfig(steps=2, init_samples=64, precision=precision)
        train_latents(sae, RowBatches(rows, 64), SoloLatents(), cfg, tmp_path, overwrite=True)

    with pytest.raises(ConfigError, match="--parallel latents runs in fp32 for now; use --prec"):
        run("bf16")
    run("auto")
    assert "precision: fp32 (auto: --parallel latents runs in fp32" in capsys.readouterr().out
    recorded = read_meta(tmp_path)["train"]
    assert recorded["precision"] == "fp32" and recorded["lr"] == default_lr(16)

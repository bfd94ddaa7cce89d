"""The end of training: the last batches kept for `SAE.finish_training`, its fields in the final
metrics, and a resumed run that finishes on the same batches (bitwise the same SAE), also when
it resumes inside the tail or after the end."""

import json

import pytest
import torch
from safetensors.torch import load_file

from saescope.data import ArticleTask, ArticleTaskConfig
from saescope.saes import make_sae
from saescope.training import TrainConfig, train
from saescope.training.config import BadBatchError
from saescope.training.finish import TAIL_TOKENS, Tail

TASK = ArticleTask(ArticleTaskConfig(d_in=8, n_features=32, max_active=6), batch_size=1024)
BATCHTOPK = {"architecture": "batchtopk", "d_in": 8, "d_sae": 32, "k": 4}


def test_the_tail_keeps_the_last_batches_covering_tail_tokens():
    tail = Tail(steps=50)
    for step in range(50):
        tail.keep(step, torch.full((1000, 2), float(step)), 1024)
    n = TAIL_TOKENS // 1024
    assert [int(x[0, 0]) for x in tail.xs] == list(range(50 - n, 50))
    short = Tail(steps=3, batch_tokens=1024)
    for step in range(3):
        short.keep(step, torch.zeros(1024, 2), 1024)
    assert len(short.xs) == 3 and short.start == 0


def test_the_final_threshold_goes_into_the_saved_sae_and_its_metrics(tmp_path):
    torch.manual_seed(0)
    result = train(make_sae(BATCHTOPK), TASK, TrainConfig(steps=12, progress=False), tmp_path)
    metrics = result.final_metrics[0]
    saved = json.loads((tmp_path / "cfg.json").read_text())["metadata"]["final_metrics"]
    assert saved == metrics and metrics["threshold_settled"] is True
    assert metrics["threshold_tokens"] == TAIL_TOKENS
    threshold = metrics["threshold"]
    assert float(result.saes[0].threshold[0]) == threshold != metrics["threshold_running"]
    weights = load_file(tmp_path / "sae_weights.safetensors")
    assert float(weights["threshold"][0]) == threshold


class _Stream:
    """TASK, with NaN in batch `stop` (training stops there, its checkpoint kept) and, with
    `outliers`, every batch's first row 100 times as long (set aside by the outlier rule)."""

    def __init__(self, stop: int | None = None, outliers: bool = False) -> None:
        self.stop, self.outliers = stop, outliers

    def iter_from(self, start):
        for i, (x, _) in enumerate(TASK.iter_from(start), start):
            if i == self.stop or self.outliers:
                x = x.clone()
                x[0] *= 100 if self.outliers else 1
                x[1, 0] = float("nan") if i == self.stop else x[1, 0]
            yield x, x


def _run(out, stream, resume=False):
    torch.manual_seed(0)
    cfg = TrainConfig(steps=20, checkpoint_every=15, progress=False)
    return train(make_sae(BATCHTOPK), stream, cfg, out, resume=resume)


@pytest.mark.parametrize(("stop", "outliers"), [(17, False), (None, False), (17, True)])
def test_a_resumed_run_finishes_bitwise_like_an_uninterrupted_one(tmp_path, stop, outliers):
    """Stopped after the checkpoint at step 15, inside the tail (steps 12-19), or resumed once
    finished: the tail is read again (outliers set aside as in training), so the threshold
    and every weight are the same."""
    whole = _run(tmp_path / "whole", _Stream(outliers=outliers))
    run = tmp_path / "run"
    if stop is None:
        _run(run, _Stream(outliers=outliers))
    else:
        with pytest.raises(BadBatchError, match=f"step {stop}"):
            _run(run, _Stream(stop, outliers))
    again = _run(run, _Stream(outliers=outliers), resume=True)
    a = load_file(tmp_path / "whole" / "sae_weights.safetensors")
    b = load_file(run / "sae_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timeless = [
        {k: v for k, v in r[0].items() if k not in ("elapsed_s", "tokens_per_s")}
        for r in (again.final_metrics, whole.final_metrics)
    ]
    assert timeless[0] == timeless[1]
    assert whole.final_metrics[0]["threshold_tokens"] == TAIL_TOKENS - 8 * outliers

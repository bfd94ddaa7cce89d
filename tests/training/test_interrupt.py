"""SIGTERM and SIGINT during training: the step in progress finishes, a checkpoint is written,
`Interrupted` says where; a second signal stops at once; the previous handlers come back."""

import dataclasses
import signal

import pytest
import torch

from saescope.data import ArticleTask, ArticleTaskConfig
from saescope.saes import make_sae
from saescope.training import Interrupted, TrainConfig, train
from saescope.training.checkpoint import read_meta

TASK = ArticleTask(ArticleTaskConfig(), batch_size=64)
CFG = TrainConfig(steps=40, init_samples=64, checkpoint_every=0, checkpoint_minutes=0)
CFG = dataclasses.replace(CFG, progress=False)
SAE = {"architecture": "topk", "d_in": 4, "d_sae": 16, "k": 2}


class Signalling:
    """TASK's batches; fetching batch `at` sends `signals` to this process, as `kill` would
    (only once saescope's handler is in place: the default one would end the test run)."""

    def __init__(self, at: int, signals: tuple[int, ...]) -> None:
        self.at, self.signals = at, signals

    def iter_from(self, start: int):
        for i, batch in enumerate(TASK.iter_from(start), start):
            if i == self.at:
                for s in self.signals:
                    assert signal.getsignal(s) not in (signal.SIG_DFL, signal.default_int_handler)
                    signal.raise_signal(s)
            yield batch


def _train(batches, out, resume=False):
    torch.manual_seed(0)
    return train(make_sae(SAE), batches, CFG, out, resume=resume).saes[0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_after_the_step_with_a_checkpoint(tmp_path, signum):
    before = signal.getsignal(signum)
    with pytest.raises(Interrupted) as stopped:
        _train(Signalling(7, (signum,)), tmp_path)
    assert signal.getsignal(signum) is before
    # batch 7 was being fetched: step 8 (counting from 1) completes, then the loop stops
    assert (stopped.value.step, read_meta(tmp_path)["step"]) == (8, 8)
    assert stopped.value.exit_status == 128 + signum
    assert signum.name in str(stopped.value) and str(tmp_path) in str(stopped.value)
    resumed = _train(TASK, tmp_path, resume=True)
    reference = _train(TASK, None)
    for name, t in reference.state_dict().items():
        assert torch.equal(t, resumed.state_dict()[name]), name


def test_a_second_signal_stops_at_once(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as stopped:
        _train(Signalling(7, (signal.SIGTERM, signal.SIGTERM)), tmp_path)
    assert not isinstance(stopped.value, Interrupted)
    assert read_meta(tmp_path) is None  # no checkpoint yet, and none written on the way out
    assert signal.getsignal(signal.SIGTERM) is before


def test_no_out_dir_leaves_the_signals_alone():
    before, seen = signal.getsignal(signal.SIGTERM), []

    class Looking:
        def iter_from(self, start):
            for batch in TASK.iter_from(start):
                seen.append(signal.getsignal(signal.SIGTERM))
                yield batch

    train(make_sae(SAE), Looking(), CFG)
    assert seen and all(h is before for h in seen)

"""`--parallel layers` with real processes (gloo, 2 ranks, one thread each): four glassllm
hook points' SAEs spread over the ranks, each equal to the SAE trained alone on the same
global batches; a rank owning none still takes part; a resume on another world size is
refused in one line."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest

from saescope.errors import ConfigError
from saescope.parallel.layers import owners, shares
from saescope.runs import Run, hooks_of, resume_hooks
from tests.parallel import layer_ranks
from tests.parallel.test_ddp import _close, _ranks

SCRIPT = Path(__file__).with_name("layer_ranks.py")


def test_owners_are_balanced_and_shares_cover_the_batch():
    for n, size in [(4, 2), (5, 2), (1, 3), (7, 4)]:
        counts = [owners(n, size).count(r) for r in range(size)]
        assert max(counts) - min(counts) <= 1 and sum(counts) == n
    cuts = shares(10, 3)
    assert cuts[0][0] == 0 and cuts[-1][1] == 10
    assert all(a[1] == b[0] for a, b in itertools.pairwise(cuts))


@pytest.mark.slow
def test_two_ranks_train_each_hook_points_sae_as_alone(tmp_path):
    out = tmp_path / "run"
    procs = _ranks(lambda r: [sys.executable, str(SCRIPT), str(out)], tmp_path)
    alone = {c: layer_ranks.alone(c) for c in layer_ranks.CASES}  # meanwhile, here
    for r, p in enumerate(procs):
        assert p.wait(timeout=300) == 0, (tmp_path / f"rank{r}.err").read_text()
    for case, hooks in layer_ranks.CASES.items():
        assert hooks_of(out / case) == hooks
        for hook in hooks:
            run = Run.open(out / case, hook=hook)
            _close(next(iter(run.saes.values())).state_dict(), alone[case][hook], hook)
            assert (run.path / "metrics.jsonl").is_file()  # its owner wrote its folder
    assert json.loads((out / "four" / "hooks.json").read_text())["world_size"] == 2
    with pytest.raises(ConfigError, match=r"trained on 2 process\(es\) and this is 1"):
        resume_hooks(out / "four")

"""Several hook points in one run, one process: each hook point's SAE equals the one trained
alone on the same batches (from the model on the fly, and from a cache of several hook
points); the run folder holds one subfolder per hook point, which `Run.open(hook=)` opens;
bad hook lists are one-line errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from saescope.activations import harvest_to_cache
from saescope.cli import main
from saescope.data.cache import CacheBatches
from saescope.errors import ConfigError, InputError
from saescope.runs import Run, hooks_of, parse_hooks, train_hooks, train_run
from saescope.training.checkpoint import read_meta
from tests.parallel import layer_ranks as L

HOOKS = ["layers.0", "layers.2"]


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_each_hook_points_sae_is_the_one_trained_alone(tmp_path):
    streams = L.streams(HOOKS)
    saes = [L.sae(s.d_in) for s in streams]
    got = train_hooks(saes, [L.spec(h) for h in HOOKS], streams, L.config(), tmp_path / "run")
    assert list(got) == HOOKS == hooks_of(tmp_path / "run")
    for s in L.streams(HOOKS):  # fresh streams: the model from scratch, the same batches
        alone = train_run(L.sae(s.d_in), L.spec(s.hooks.x), s, L.config(), None)
        _same(got[s.hooks.x].saes[0].state_dict(), alone.saes[0].state_dict())
        run = Run.open(tmp_path / "run", hook=s.hooks.x)
        assert run.path == tmp_path / "run" / s.hooks.x and run.data.hook == s.hooks.x
    with pytest.raises(InputError, match=r"several hook points \(layers.0, layers.2\).*--hook"):
        Run.open(tmp_path / "run")
    with pytest.raises(ConfigError, match="already holds a run"):  # hooks.json untouched
        train_hooks(saes, [L.spec(h) for h in HOOKS], streams, L.config(), tmp_path / "run")
    with pytest.raises(InputError, match=r"no SAE at hook point 'layers\.1'"):
        Run.open(tmp_path / "run", hook="layers.1")


def test_a_cache_of_several_hook_points_trains_them_together(tmp_path):
    model = L.streams(HOOKS)[0].model
    ids = torch.randint(100, (40, L.CONTEXT), generator=torch.Generator().manual_seed(3))
    harvest_to_cache(model, ids, HOOKS, tmp_path / "cache", {"model": "glassllm"}, progress=False)
    cache = [CacheBatches(tmp_path / "cache", h, batch_size=64, seed=1) for h in HOOKS]
    specs = [L.spec(h) for h in HOOKS]  # recorded only
    got = train_hooks([L.sae(s.d_in) for s in cache], specs, cache, L.config(), tmp_path / "r")
    for h in HOOKS:
        one = CacheBatches(tmp_path / "cache", h, batch_size=64, seed=1)
        alone = train_run(L.sae(one.d_in), L.spec(h), one, L.config(), None)
        _same(got[h].saes[0].state_dict(), alone.saes[0].state_dict())


def test_hook_lists_are_checked(tmp_path, capsys):
    assert parse_hooks("layers.0, layers.1") == ["layers.0", "layers.1"]
    with pytest.raises(ConfigError, match=r"layers\.1 more than once"):
        parse_hooks("layers.1,layers.0,layers.1")
    with pytest.raises(ConfigError, match="empty hook point"):
        parse_hooks("layers.1,")
    cache = tmp_path / "cache"
    ids = torch.randint(100, (8, L.CONTEXT), generator=torch.Generator().manual_seed(3))
    model = L.streams(HOOKS[:1])[0].model
    harvest_to_cache(model, ids, HOOKS, cache, {"model": "glassllm"}, progress=False)
    base = ["train", "--data", str(cache), "--arch", "topk", "--out", str(tmp_path / "x")]
    assert main([*base, "--hook", "layers.0,layers.0"]) == 2
    assert main([*base, "--hook", "layers.0,layers.1"]) == 2  # not in the cache
    assert main([*base, "--hook", "layers.0,layers.2", "--parallel", "ddp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3, err
    assert "more than once" in err[0] and "layers.1" in err[1] and "not ddp" in err[2]


def test_a_stopped_run_resumes_to_the_uninterrupted_weights(tmp_path):
    cfg = dataclasses.replace(L.config(), steps=8, checkpoint_every=3)
    specs = [L.spec(h) for h in HOOKS]

    def train(out, resume=False, fail_at=None):
        streams = L.streams(HOOKS)
        if fail_at is not None:  # the source breaks at batch fail_at: the runs stop there
            rows_at = streams[0].rows_at

            def broken(i, *a):
                if i == fail_at:
                    raise InputError("the source broke")
                return rows_at(i, *a)

            streams[0].rows_at = broken
        saes = [L.sae(s.d_in) for s in streams]
        return train_hooks(saes, specs, streams, cfg, out, resume=resume)

    whole = train(tmp_path / "whole")
    with pytest.raises(InputError, match="the source broke"):
        train(tmp_path / "run", fail_at=5)
    assert all(read_meta(tmp_path / "run" / h)["step"] == 3 for h in HOOKS)
    resumed = train(tmp_path / "run", resume=True)
    for h in HOOKS:
        _same(resumed[h].saes[0].state_dict(), whole[h].saes[0].state_dict())

"""Several hook points in one run, one process: each hook point's SAE equals the one trained
alone on the same batches (from the model on the fly, and from a cache of several hook
points); the run folder holds one subfolder per hook point, which `Run.open(hook=)` opens;
bad hook lists are one-line errors."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from saescope import precision
from saescope.activations import harvest_to_cache
from saescope.cli import main
from saescope.data.cache import CacheBatches
from saescope.errors import ConfigError, FormatError, InputError
from saescope.runs import (
    DataSpec,
    Run,
    build_owned,
    hooks_of,
    is_layered,
    layers,
    parse_hooks,
    resume_hooks,
    train_hooks,
    train_run,
)
from saescope.saes import make_sae
from saescope.training.checkpoint import read_meta
from saescope.training.config import default_lr
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


def _cache_run(tmp_path, rows: int = 40):
    """A cache of HOOKS and its specs (resume_hooks reopens them as recorded)."""
    model = L.streams(HOOKS[:1])[0].model
    ids = torch.randint(100, (rows, L.CONTEXT), generator=torch.Generator().manual_seed(3))
    harvest_to_cache(model, ids, HOOKS, tmp_path / "cache", {"model": "glassllm"}, progress=False)
    return [DataSpec.cache(tmp_path / "cache", h, None, 1) for h in HOOKS]


def test_an_early_failure_leaves_no_run_in_the_way(tmp_path):
    specs = _cache_run(tmp_path, rows=12)
    out, cfg = tmp_path / "run", dataclasses.replace(L.config(), steps=2)
    streams = [specs[0].open(64), specs[1].open(32)]  # refused: batches of 64 and 32 rows
    with pytest.raises(ConfigError, match=r"batches of \[32, 64\] rows"):
        train_hooks([L.sae(s.d_in) for s in streams], specs, streams, cfg, out)
    assert not is_layered(out)  # checked before anything was written
    streams = [s.open(64) for s in specs]
    part = streams[1].part

    def broken(i, *a):
        raise InputError("the source broke")

    streams[1].part = broken  # fails before any checkpoint
    with pytest.raises(InputError, match="the source broke"):
        train_hooks([L.sae(s.d_in) for s in streams], specs, streams, cfg, out)
    assert is_layered(out) and not any(list((out / h).glob("checkpoint*")) for h in HOOKS)
    with pytest.raises(FormatError, match="nothing to resume: no hook point"):
        resume_hooks(out)
    streams[1].part = part  # a corrected call starts afresh without --overwrite
    got = train_hooks([L.sae(s.d_in) for s in streams], specs, streams, cfg, out)
    assert list(got) == HOOKS and all(read_meta(out / h)["step"] == 2 for h in HOOKS)


def test_a_hook_point_stopped_before_its_first_checkpoint_starts_afresh(tmp_path):
    specs = _cache_run(tmp_path)
    cfg = dataclasses.replace(L.config(), steps=6, checkpoint_every=3)

    def train(out, fail_at=None):
        streams = [s.open(64) for s in specs]
        if fail_at is not None:
            part = streams[0].part
            streams[0].part = lambda i, *a: _fail_at(i, fail_at) or part(i, *a)
        return train_hooks([L.sae(s.d_in) for s in streams], specs, streams, cfg, out)

    whole = train(tmp_path / "whole")
    with pytest.raises(InputError, match="the source broke"):
        train(tmp_path / "run", fail_at=4)
    (tmp_path / "run" / HOOKS[1] / "checkpoint.safetensors").unlink()  # as if never saved
    resumed = resume_hooks(tmp_path / "run")  # HOOKS[0] from step 3, HOOKS[1] from 0
    for h in HOOKS:
        _same(resumed[h].saes[0].state_dict(), whole[h].saes[0].state_dict())
        assert read_meta(tmp_path / "run" / h)["step"] == 6


def _fail_at(i: int, at: int) -> None:
    if i == at:
        raise InputError("the source broke")


def test_each_process_builds_only_its_own_saes():
    class Group:
        rank, size = 1, 2

    built = build_owned(3, Group(), 0, lambda j: make_sae(_topk(8)))  # type: ignore[arg-type]
    assert built[0] is None and built[2] is None and built[1] is not None
    alone = build_owned(3, None, 0, lambda j: make_sae(_topk(8)))
    _same(built[1].state_dict(), alone[1].state_dict())  # as a run of that hook point alone
    _same(alone[0].state_dict(), alone[2].state_dict())  # each seeded afresh


def _topk(d_in: int) -> dict:
    return {"architecture": "topk", "d_in": d_in, "d_sae": 16, "k": 2}


def test_the_batches_are_made_at_the_settled_precision(tmp_path, monkeypatch):
    """The model harvesting on the fly for several hook points runs at the precision the runs
    train at (bf16 here), settled once, not the main thread's default fp32."""
    seen = []
    parts = layers.Joint.parts

    def spied(self, i, lo, hi):
        seen.append(precision.model_dtype())
        return parts(self, i, lo, hi)

    monkeypatch.setattr(layers.Joint, "parts", spied)
    streams = L.streams(HOOKS)
    cfg = dataclasses.replace(L.config(), steps=2, init_samples=96, precision="bf16")
    saes, specs = [L.sae(s.d_in) for s in streams], [L.spec(h) for h in HOOKS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", precision.SlowPrecisionWarning)  # a CPU without bf16
        train_hooks(saes, specs, streams, cfg, tmp_path / "r")
    assert len(seen) == 2 and set(seen) == {torch.bfloat16}
    assert read_meta(tmp_path / "r" / HOOKS[0])["train"]["precision"] == "bf16"


def test_hook_points_of_other_widths_resume_each_at_its_own_rate(tmp_path):
    """No lr given: each hook point's SAE trains at the default for its width and records
    it; a resume continues each at its own (not one hook point's for all)."""
    specs = _cache_run(tmp_path, rows=12)
    streams = [s.open(64) for s in specs]
    saes = [make_sae({**_topk(s.d_in), "d_sae": w}) for s, w in zip(streams, (16, 64), strict=True)]
    cfg = dataclasses.replace(L.config(), steps=2, lr=None)
    train_hooks(saes, specs, streams, cfg, tmp_path / "run")
    rates = [read_meta(tmp_path / "run" / h)["train"]["lr"] for h in HOOKS]
    assert rates == [default_lr(16), default_lr(64)]
    resume_hooks(tmp_path / "run")  # finished: each resumes, at its own rate
    assert [read_meta(tmp_path / "run" / h)["train"]["lr"] for h in HOOKS] == rates

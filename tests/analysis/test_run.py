"""Building an index: index_run on a glassllm run (the pages' windows are the text's tokens
and the SAE's activations; logit tokens are steer's), a finished index found again, and a
build interrupted part-way resumed to the same index as an uninterrupted one."""

import shutil

import pytest
import torch

from saescope.analysis import FeatureIndex, IndexConfig, index_run, run_contexts
from saescope.analysis.accumulate import GroupTop
from saescope.analysis.build import IndexState
from saescope.analysis.run import CHECKPOINT
from saescope.errors import InputError
from saescope.models.harvest import harvest
from saescope.runs import Run
from saescope.steer.effects import logit_effects
from tests.analysis.common import CFG, CLASSES, D_SAE, build, classes_data

TOKENS = 3000


def copy_run(src, dst):
    """The run folder's SAE without its training checkpoint (the index writes in it)."""
    dst.mkdir()
    for name in ("cfg.json", "sae_weights.safetensors"):
        shutil.copy(src / name, dst / name)
    return dst


def pages(path) -> list[dict]:
    with FeatureIndex.open(path) as idx:
        return [idx.feature(i) for i in range(idx.d_sae)]


@pytest.mark.slow
def test_index_run_on_glassllm(glass_sae, tmp_path):
    run = Run.open(copy_run(glass_sae, tmp_path / "glass"))
    cfg = IndexConfig(tokens=TOKENS, batch_size=4)
    path = index_run(run, cfg=cfg, progress=False)
    assert path == tmp_path / "glass" / "index.sqlite" and not (path.parent / CHECKPOINT).exists()
    contexts = run_contexts(run, TOKENS)
    held = run.held_out_contexts()
    assert torch.equal(contexts[: len(held)], held[: len(contexts)])
    model, tok = run.data.load_model()
    sae = run.saes["glass"]
    with torch.no_grad():
        rows = [g["layers.2"] for g in harvest(model, contexts, ["layers.2"], 8)]
        f = sae.encode(torch.cat(rows)).view(contexts.shape[0], contexts.shape[1] - 1, -1)
    f = torch.cat([torch.zeros_like(f[:, :1]), f], 1)  # (contexts, positions, d_sae); 0 at 0
    idx = FeatureIndex.open(run.path)
    assert idx.info["kind"] == "lm" and idx.info["hook"] == "layers.2"
    assert idx.info["tokens"] == contexts.shape[0] * (contexts.shape[1] - 1)
    fired = (f > 0).flatten(0, 1).sum(0)
    for i in fired.nonzero().flatten()[:40].tolist():
        page = idx.feature(i)
        assert page["fired"] == int(fired[i])
        assert page["max_act"] == pytest.approx(float(f[..., i].max()))
        per_ctx = f[..., i].max(1).values
        want = torch.sort(per_ctx[per_ctx > 0], descending=True).values[: cfg.top]
        assert [e["max"] for e in page["top"]] == pytest.approx(want.tolist())
        for e in page["top"] + [x for s in page["intervals"] for x in s["examples"]]:
            c, p, at, n = e["example"], e["position"], e["at"], len(e["tokens"])
            ids = contexts[c, p - at : p - at + n].tolist()
            assert e["tokens"] == [tok.decode([t]) for t in ids]
            assert e["acts"] == pytest.approx(f[c, p - at : p - at + n, i].tolist(), abs=1e-5)
            assert e["max"] == pytest.approx(float(f[c, p, i])) and 0 < n <= cfg.width
        want_logits = logit_effects(sae, model, [i], cfg.logits)[0]
        assert [t["token"] for t in page["logits"]["top"]] == [
            tok.decode([t]) for t, _ in want_logits.top
        ]
    idx.close()
    stamp = path.stat().st_mtime_ns
    assert index_run(run, cfg=cfg, progress=False) == path and path.stat().st_mtime_ns == stamp


def test_an_interrupted_build_resumes_to_the_same_index(tmp_path, monkeypatch):
    """Ctrl-C between batches: the state is checkpointed and the build goes on from there."""
    whole = pages(build(tmp_path / "whole")[0])
    kind = type(classes_data(0)[0])
    real_encode, calls = kind.encode, []

    def encode(self, x):
        calls.append(1)
        if len(calls) == 3:  # Ctrl-C while the third batch is encoded: two are in
            raise KeyboardInterrupt
        return real_encode(self, x)

    monkeypatch.setattr(kind, "encode", encode)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "cut")
    assert (tmp_path / "cut" / CHECKPOINT).is_file() and not (
        tmp_path / "cut" / "index.sqlite"
    ).exists()
    monkeypatch.setattr(kind, "encode", real_encode)
    resumed = []
    monkeypatch.setattr(IndexState, "resume", _spy(IndexState.resume, resumed))
    assert pages(build(tmp_path / "cut")[0]) == whole
    assert resumed == [2]  # it went on from the two batches checkpointed


def test_ctrl_c_in_the_middle_of_a_batch_saves_nothing_half_done(tmp_path, monkeypatch):
    """Ctrl-C while a batch is half added (its counts in, its top examples not): no checkpoint
    of that state is written, and the build run again equals an uninterrupted one."""
    whole = pages(build(tmp_path / "whole")[0])
    real_offer, calls = GroupTop.offer, []

    def offer(self, *a, **kw):
        calls.append(1)
        if len(calls) == 5:  # the third batch's counts are in, its top lists not yet
            raise KeyboardInterrupt
        return real_offer(self, *a, **kw)

    monkeypatch.setattr(GroupTop, "offer", offer)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "cut")
    assert not (tmp_path / "cut" / CHECKPOINT).exists()
    monkeypatch.setattr(GroupTop, "offer", real_offer)
    assert pages(build(tmp_path / "cut")[0]) == whole


def test_an_index_in_a_folder_named_with_uri_characters(tmp_path):
    """'#', '?' and '%' in the path: the index opens that file (an SQLite URI is encoded)."""
    path = build(tmp_path / "a#b?c%20d")[0]
    with FeatureIndex.open(path) as idx:
        assert idx.info["d_sae"] == D_SAE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a#b?c%20d"]


def _spy(resume, seen):
    def spy(*args, **kw):
        state = resume(*args, **kw)
        seen.append(state.batches)
        return state

    return staticmethod(spy).__func__


def test_a_checkpoint_of_other_data_is_not_resumed(tmp_path):
    path, *_ = build(tmp_path, seed=0)
    sae, acts, labels = classes_data(seed=1)
    state = IndexState(D_SAE, 1, CFG)
    state.batches = 4
    state.save(path.with_name(CHECKPOINT), {"sae": "another", "source": {}, "config": {}})
    path.unlink()
    from saescope.analysis import index_classes

    index_classes(tmp_path, sae, acts, labels, CLASSES, CFG)
    assert pages(path) == pages(build(tmp_path / "fresh", seed=1)[0])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a, y: (a[:, :3], y), "acts must be"),
        (lambda a, y: (a, y[:5]), "labels must be"),
        (lambda a, y: (a, y + 10), "labels must be class ids"),
        (lambda a, y: (a, y.float()), "labels must be"),
    ],
)
def test_index_classes_refuses_bad_input(tmp_path, change, message):
    from saescope.analysis import index_classes

    sae, acts, labels = classes_data()
    acts, labels = change(acts, labels)
    with pytest.raises(InputError, match=message):
        index_classes(tmp_path, sae, acts, labels, CLASSES, CFG)

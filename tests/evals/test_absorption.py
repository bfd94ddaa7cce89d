import math

import pytest
import torch

from saescope.data import HierarchicalTask, HierarchicalTaskConfig
from saescope.errors import InputError
from saescope.evals.absorption import (
    AbsorptionConfig,
    absorption_scores,
    first_letter,
    labelled_absorption,
    main_latents,
    word_tokens,
)
from saescope.evals.linear import Probe
from saescope.runs import Run
from saescope.saes import make_sae

P, C = 4, 16
TASK = HierarchicalTaskConfig(
    d_in=256, n_parents=P, n_children=C, n_independent=0, parent_prob=0.3, child_prob=0.3,
    coef_low=1.0, coef_high=1.0, feature_seed=3,
)  # fmt: skip


def _features(task: HierarchicalTask) -> torch.Tensor:
    """The task's feature directions made orthonormal (QR), so that no interference blurs the
    known answer; the task's sampler still gives which features fire."""
    q, _ = torch.linalg.qr(task.features.T.double())
    return q.T.float()  # (P + P*C, d)


def _sae(task: HierarchicalTask, absorbing: bool):
    """A ReLU SAE built by hand on the (orthonormal) true features, one latent per feature
    (parents first, then children, the task's order). Absorbing: a parent's latent is switched
    off by any of its children, whose latents carry the parent's direction (decoder
    unit(p + c)); else each latent reads and writes its own feature."""
    feats = _features(task)
    n = feats.shape[0]
    sae = make_sae({"architecture": "relu", "d_in": TASK.d_in, "d_sae": n})
    W_enc, W_dec, b_enc = torch.zeros(TASK.d_in, n), feats.clone(), torch.zeros(n)
    for p in range(P):
        kids = task.children(p)
        W_enc[:, p] = 2 * feats[p]
        b_enc[p] = -1.0
        for c in kids:
            W_enc[:, c] = 2 * feats[c]
            b_enc[c] = -1.0
            if absorbing:
                W_dec[c] = (feats[p] + feats[c]) / (feats[p] + feats[c]).norm()
                W_enc[:, c] *= math.sqrt(2)
                b_enc[c] *= math.sqrt(2)
        if absorbing:
            W_enc[:, p] -= 4 * feats[kids].sum(0)
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_enc.copy_(b_enc)
        sae.b_dec.zero_()
    return sae.eval()


def _rows(task: HierarchicalTask, n: int, seed: int):
    """Rows with exactly one parent active: x, its parent (the label), whether a child is."""
    _, c = task.sample(n, torch.Generator().manual_seed(seed))
    x = c @ _features(task)
    on = c[:, :P] > 0
    one = on.sum(1) == 1
    x, c, on = x[one], c[one], on[one]
    return x, on.float().argmax(1), (c[:, P:] > 0).any(1)


@pytest.fixture(scope="module")
def task():
    return HierarchicalTask(TASK)


def test_absorption_scores_find_the_absorbing_child(task):
    sae = _sae(task, absorbing=True)
    x, parent, child = _rows(task, 4000, 0)
    rows = parent == 0
    with torch.no_grad():
        f = sae.encode(x[rows])
    got = absorption_scores(x[rows], f, sae.W_dec, _features(task)[0], [0], AbsorptionConfig())
    assert torch.equal(got["full"], child[rows])  # absorbed exactly when a child fires
    kids = set(task.children(0).tolist())
    assert set(got["absorber"][got["full"]].tolist()) <= kids
    assert torch.allclose(got["fraction"], child[rows].float(), atol=1e-5)


def test_no_absorption_without_an_absorbing_latent(task):
    sae = _sae(task, absorbing=False)
    x, parent, _ = _rows(task, 4000, 0)
    rows = parent == 0
    with torch.no_grad():
        f = sae.encode(x[rows])
    got = absorption_scores(x[rows], f, sae.W_dec, _features(task)[0], [0], AbsorptionConfig())
    assert not got["full"].any()
    assert float(got["fraction"].max()) == 0.0


def test_main_latent_is_the_parent_latent(task):
    sae = _sae(task, absorbing=True)
    x, parent, _ = _rows(task, 6000, 1)
    with torch.no_grad():
        f = sae.encode(x)
    for p in range(P):
        assert main_latents(f, parent == p) == [p]


@pytest.mark.parametrize("fitted", [False, True])
def test_labelled_absorption_rate_is_the_child_share(task, fitted):
    """Per parent, the rate is the share of its (probe-correct) rows where a child fires, and
    the absorbing latents are its children's; with the true directions as the probe, exactly."""
    sae = _sae(task, absorbing=True)
    train, test = _rows(task, 6000, 1), _rows(task, 6000, 2)
    names = [f"parent{p}" for p in range(P)]
    probe = None
    if not fitted:
        W = _features(task)[:P].T.double()
        probe = Probe(torch.zeros(TASK.d_in, dtype=torch.float64), 1.0, W, torch.zeros(P).double())
    got = labelled_absorption((train[0], test[0]), (train[1], test[1]), sae, names, probe=probe)
    assert got["probe_accuracy"] > 0.95
    assert got["classes_scored"] == P
    for p, name in enumerate(names):
        cls = got["classes"][name]
        assert cls["main_latents"] == [p]
        share = float(test[2][test[1] == p].double().mean())
        tol = 1e-9 if not fitted else 0.05
        assert cls["absorption_rate"] == pytest.approx(share, abs=tol)
        assert cls["main_silent"] == pytest.approx(share, abs=tol)  # silent only when absorbed
        assert set(cls["absorbers"]) <= set(task.children(p).tolist())
    rates = [c["absorption_rate"] for c in got["classes"].values()]
    assert got["mean_absorption"] == pytest.approx(sum(rates) / P)


def test_a_model_without_a_tokenizer_is_one_line():
    with pytest.raises(InputError, match="tokenizer"):
        word_tokens(None)
    with pytest.raises(InputError, match="n_words"):
        AbsorptionConfig(n_words=3)


def test_first_letter_on_glassllm(glass, glass_sae):
    model, tok = glass
    words = word_tokens(tok)
    assert words and all(w.startswith(" ") and w[1:].isalpha() for _, w in words)
    run = Run.open(glass_sae)
    cfg = AbsorptionConfig(n_words=100, max_k=3)
    (got,) = first_letter(model, tok, "layers.2", run.saes, cfg).values()
    assert got["n_words"] == 100 and got["n_test"] == 20
    assert 0 <= got["probe_accuracy"] <= 1
    for cls in got["classes"].values():
        assert 1 <= len(cls["main_latents"]) <= 3

"""Feature search: the numbers of `token_features` and `top_features` against a brute-force
pass over every position, streaming that does not change them, the rankings, word matching
(a word of several tokens at its last token), outlier tokens, and the one-line errors."""

import pytest
import torch

from saescope.data.outliers import OutlierRule
from saescope.errors import InputError
from saescope.saes import make_sae
from saescope.steer.effects import direct_logits
from saescope.steer.search import token_features, top_features, word_ids, word_positions
from tests.steer.common import random_topk

TEXT = (
    "The Queen said to the King, and the King said to the Queen: off with his head! "
    "Alice looked at the Queen, and the Queen looked at the Mock Turtle, who sighed. "
    "The King was silent; the Queen of Hearts was not. "
)
HOOK = "layers.1"


@pytest.fixture(scope="module")
def sae():
    return random_topk(128, 256, 8, seed=3, spread=0.3)


@pytest.fixture(scope="module")
def contexts(glass):
    _, tok = glass
    ids = tok.encode(TEXT * 4)
    n = len(ids) // 24
    return torch.tensor(ids[: n * 24]).view(n, 24)


def _brute(model, sae, contexts, on):
    """Every activation f (n, d_sae) of positions 1.. and which rows are on the word."""
    seen = {}
    h = dict(model.named_modules())[HOOK].register_forward_hook(
        lambda m, a, out: seen.update(x=out)
    )
    try:
        with torch.no_grad():
            model(contexts)
    finally:
        h.remove()
    with torch.no_grad():
        f = sae.encode(seen["x"][:, 1:].reshape(-1, 128))
    return f, on[:, 1:].reshape(-1)


def test_word_positions_find_a_word_of_several_tokens_at_its_last_token():
    ctx = torch.tensor([[5, 1, 2, 3, 1, 2], [1, 2, 1, 9, 2, 1]])
    assert word_positions(ctx, [1, 2]).nonzero().tolist() == [[0, 2], [0, 5], [1, 1]]
    assert word_positions(ctx, [9]).nonzero().tolist() == [[1, 3]]
    assert not word_positions(ctx[:, :1], [1, 2]).any()  # shorter than the word


def test_word_ids_and_the_one_line_errors(glass):
    _, tok = glass
    assert word_ids(tok, " Queen") == tok.encode(" Queen")
    assert len(word_ids(tok, " queen")) == 2
    for bad in ("", " Zyzzx€"):
        with pytest.raises(InputError, match="give a word") as e:
            word_ids(tok, bad)
        assert "\n" not in str(e.value)


def test_token_features_match_a_brute_force_pass(glass, sae, contexts):
    model, tok = glass
    got = token_features(sae, model, tok, HOOK, contexts, " Queen", top=6, batch_size=3)
    on = word_positions(contexts, tok.encode(" Queen"))
    f, on_rows = _brute(model, sae, contexts, on)
    assert got.occurrences == int(on[:, 1:].sum()) > 0 and got.positions == f.shape[0]
    scores = []
    for s in got.by_activation + got.by_logit:
        col = f[:, s.feature].double()
        fires = col > 0
        assert s.mean_on == pytest.approx(float(col[on_rows].mean()), abs=1e-6)
        assert s.mean_off == pytest.approx(float(col[~on_rows].mean()), abs=1e-6)
        assert s.recall == pytest.approx(float(fires[on_rows].double().mean()))
        if fires.any():
            assert s.precision == pytest.approx(float(on_rows[fires].double().mean()))
        assert s.max_act == pytest.approx(float(col.max()), abs=1e-6)
        share = float(col[on_rows].sum() / col.sum()) if col.sum() > 0 else 0.0
        want = 2 * share * s.recall / (share + s.recall) if share + s.recall else 0.0
        assert s.score == pytest.approx(want, abs=1e-9)
        row = direct_logits(sae, model, [s.feature])[0]
        assert s.logit == pytest.approx(float(row[tok.encode(" Queen")[0]]), abs=1e-5)
        assert s.logit_rank == int((row > row[tok.encode(" Queen")[0]]).sum()) + 1
        scores.append(s.score)
    acts = [s.score for s in got.by_activation]
    assert acts == sorted(acts, reverse=True) and acts[0] > 0
    # no feature outside the list scores higher than its last
    col_on = f[on_rows].double().sum(0)
    share = torch.where(f.sum(0) > 0, col_on / f.double().sum(0), 0.0)
    recall = (f[on_rows] > 0).double().mean(0)
    best = torch.nan_to_num(2 * share * recall / (share + recall)).topk(6).values
    assert acts == pytest.approx(best.tolist(), abs=1e-9)
    ranks = [(s.logit_rank, -s.logit) for s in got.by_logit]
    assert ranks == sorted(ranks) and all(s.density > 0 for s in got.by_logit)


def test_streaming_in_batches_changes_nothing(glass, sae, contexts):
    model, tok = glass
    a = token_features(sae, model, tok, HOOK, contexts, " King", top=5, batch_size=1)
    b = token_features(sae, model, tok, HOOK, contexts, " King", top=5, batch_size=64)
    assert [s.feature for s in a.by_activation] == [s.feature for s in b.by_activation]
    for x, y in zip(a.by_activation, b.by_activation, strict=True):
        assert x.mean_on == pytest.approx(y.mean_on) and x.score == pytest.approx(y.score)


def test_top_features_are_the_most_active(glass, sae, contexts):
    model, _ = glass
    got = top_features(sae, model, HOOK, contexts, top=4, batch_size=2)
    f, _ = _brute(model, sae, contexts, torch.zeros_like(contexts, dtype=torch.bool))
    means = f.double().mean(0)
    assert [a.feature for a in got] == means.topk(4).indices.tolist()
    for a in got:
        col = f[:, a.feature]
        assert a.mean == pytest.approx(float(means[a.feature]), abs=1e-6)
        assert a.density == pytest.approx(float((col > 0).double().mean()))
        assert a.mean_active == pytest.approx(float(col[col > 0].mean()), abs=1e-5)


def test_outlier_tokens_are_set_aside(glass, sae, contexts):
    model, tok = glass
    seen = {}
    h = dict(model.named_modules())[HOOK].register_forward_hook(lambda m, a, o: seen.update(x=o))
    try:
        with torch.no_grad():
            model(contexts)
    finally:
        h.remove()
    norms = seen["x"][:, 1:].norm(dim=-1)  # (n, T - 1)
    rule = OutlierRule(factor=1.0, x_max=float(norms.median()))
    got = token_features(sae, model, tok, HOOK, contexts, " Queen", top=3, outliers=rule)
    kept = norms <= rule.x_max
    on = word_positions(contexts, tok.encode(" Queen"))[:, 1:]
    assert got.positions == int(kept.sum()) < norms.numel()
    assert got.occurrences == int(on.sum())  # found in the text; measured where kept
    none = OutlierRule(factor=1.0, x_max=0.0)
    with pytest.raises(InputError, match="outlier"):
        token_features(sae, model, tok, HOOK, contexts, " Queen", top=3, outliers=none)
    with pytest.raises(InputError, match="outlier"):
        top_features(sae, model, HOOK, contexts, outliers=none)


def test_the_one_line_errors(glass, sae, contexts):
    model, tok = glass
    with pytest.raises(InputError, match="never occurs in the"):
        token_features(sae, model, tok, HOOK, contexts, " Rabbit")
    with pytest.raises(InputError, match="contexts must be"):
        token_features(sae, model, tok, HOOK, contexts[:, :1], " Queen")
    wide = make_sae({"architecture": "topk", "d_in": 64, "d_sae": 32, "k": 4})
    with pytest.raises(InputError, match=r"d_in 64 but hook layers\.1 has width 128"):
        token_features(wide, model, tok, HOOK, contexts, " Queen")

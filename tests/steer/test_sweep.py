"""Measuring an intervention: CE and p(word) on held-out text against a plain computation,
the clean baseline, generations at fixed seeds, and a push towards a word that shows."""

import pytest
import torch

from saescope.steer import AddVector
from saescope.steer.sweep import Probe, held_out

TEXT = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of "
    "having nothing to do: once or twice she had peeped into the book her sister was reading, "
    "but it had no pictures or conversations in it, and what is the use of a book, thought "
    "Alice, without pictures or conversations? So she was considering in her own mind"
)


@pytest.fixture(scope="module")
def contexts(glass):
    _, tok = glass
    ids = tok.encode(TEXT)
    return torch.tensor(ids[:60]).view(3, 20)


def _probe(glass, contexts, **kw):
    model, tok = glass
    queen = tok.encode(" Queen")[0]
    return Probe(model, tok, contexts, " Queen", queen, ["The", "She said"], **kw)


def test_held_out_ce_and_probabilities_match_a_plain_computation(glass, contexts):
    model, tok = glass
    queen = tok.encode(" Queen")[0]
    ce, p_word, p_watch = held_out(model, contexts, [], queen, queen)
    with torch.no_grad():
        logp = model(contexts).log_softmax(-1)[:, 1:-1]  # predictions from position 1 on
    want = -logp.gather(-1, contexts[:, 2:, None]).mean()
    assert ce == pytest.approx(float(want), rel=1e-5)
    assert p_word == pytest.approx(float(logp[..., queen].exp().mean()), rel=1e-5)
    assert torch.allclose(p_watch, logp[..., queen].exp().mean(1))


def test_the_clean_model_is_the_baseline_and_seeds_are_fixed(glass, contexts):
    probe = _probe(glass, contexts, samples=3, new_tokens=8)
    clean = probe.measure()
    again = probe.measure()
    assert clean == again and clean.raised == 0.0 and clean.multiple is None
    assert 0 <= clean.rate <= 1 and clean.example.startswith("The")


def test_pushing_towards_the_word_shows_in_every_number(glass, contexts):
    model, tok = glass
    probe = _probe(glass, contexts, samples=4, new_tokens=12)
    clean = probe.measure()
    toward = model.embed.weight[tok.encode(" Queen")[0]].detach()  # tied unembedding row
    push = probe.measure([AddVector("layers.3", vector=toward / toward.norm(), alpha=40.0)])
    assert push.p_word > 10 * clean.p_word and push.raised == 1.0
    assert push.rate > clean.rate and push.samples_with > clean.samples_with
    assert push.ce > clean.ce
    # measured without a clean call first, the baseline is measured on the way
    fresh = _probe(glass, contexts, samples=4, new_tokens=12)
    assert fresh.measure([AddVector("layers.3", vector=toward, alpha=0.0)]).raised == 0.0

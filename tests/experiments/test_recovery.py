"""Ground-truth recovery on the seed's task and why the literal 4-D version has a ceiling."""

import pytest
import torch

from saescope.data import ArticleTask, ArticleTaskConfig
from saescope.evaluate import evaluate
from saescope.experiments.recovery import ARTICLE_TASK, SEPARABLE_TASK, run_task
from saescope.runs import DataSpec, build_sae
from saescope.saes import make_sae
from saescope.training import TrainConfig, train


@pytest.mark.claim
def test_in_4d_the_true_dictionary_is_not_the_loss_minimum():
    """8 features in 4-D (the seed's task): an SAE whose decoder is frozen at the true
    features reconstructs worse than one whose decoder may tilt away from them, so training
    drifts off the truth and best-match cosines of 0.99 are out of reach for any
    linear-threshold encoder. (docs/RESULTS.md has the numbers.)"""
    task = ArticleTask(ArticleTaskConfig(), batch_size=1024)
    held = ArticleTask(task.cfg, batch_size=8192, seed=77)
    cfg = TrainConfig(steps=1500, b_dec_init="zeros", progress=False)
    saes = {}
    for frozen in (True, False):
        sae = make_sae({"architecture": "batchtopk", "d_in": 4, "d_sae": 8, "k": 2})
        with torch.no_grad():
            sae.W_dec.copy_(task.features)
            sae.W_enc.copy_(torch.linalg.pinv(task.features))
        if frozen:
            sae.W_dec.requires_grad_(False)
            sae.b_dec.requires_grad_(False)
        saes[frozen] = sae
    # Both in one pass over one stream: the same weights as two runs (test_train checks).
    trained = train(list(saes.values()), task, cfg).saes
    scores = {
        frozen: evaluate(out, held, 16_384, features=task.features)
        for frozen, out in zip(saes, trained, strict=True)
    }
    assert scores[True]["min_feature_cosine"] > 0.999  # frozen really stayed at the truth
    assert scores[False]["explained_variance"] > scores[True]["explained_variance"] + 0.02
    assert scores[False]["min_feature_cosine"] < 0.95


@pytest.fixture(scope="module")
def separable(claim_seed):
    """The demo's separable setting (40 features in 32-D), all five SAEs in one pass."""
    return run_task(SEPARABLE_TASK, None, seed=claim_seed, progress=False)


# Every architecture recovers every feature at cosine >= 0.99 with L0 within 25 % of the true
# mean (docs/RESULTS.md has the numbers for seeds 0-2).
MIN_COSINE = 0.99


@pytest.mark.claim
def test_every_architecture_recovers_every_feature(separable):
    for row in separable:
        assert row["min_feature_cosine"] >= MIN_COSINE, row
        true_l0 = SEPARABLE_TASK.task.mean_active
        assert abs(row["l0"] - true_l0) <= 0.25 * true_l0, row


@pytest.fixture(scope="module")
def seed_task():
    return run_task(ARTICLE_TASK, None, seed=0, progress=False)


def test_the_article_task_trains_the_default_saes():
    """ARTICLE_TASK's SAEs and training are what `saescope train --arch A --d-sae 8` builds on
    the synthetic data with every other setting left at its default, so the claim below is
    also the claim that the defaults work (tests/cli/test_train.py runs one through the CLI)."""
    stream = DataSpec.synthetic().open(batch_size=1024)
    for spec in ARTICLE_TASK.saes:
        built = make_sae({"d_in": stream.d_in, **spec}).cfg
        assert built == build_sae(spec["architecture"], stream, d_sae=8).cfg, spec
    assert ARTICLE_TASK.train == TrainConfig()
    assert ARTICLE_TASK.task == ArticleTaskConfig()


@pytest.mark.claim
def test_seed_task_reaches_the_true_l0(seed_task):
    """On the seed's own 4-D task every architecture, with default settings, reaches L0
    within 0.5 of the true 2.0 (the seed's printed code stays near 18 of 32)."""
    for row in seed_task:
        assert abs(row["l0"] - ARTICLE_TASK.task.mean_active) <= 0.5, row
        assert row["explained_variance"] > 0.8, row

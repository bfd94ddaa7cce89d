"""Training towards a target L0: the controller's rule, the loop steering relu, gated and
jumprelu to the target, the record in metrics.jsonl, cfg.json and the checkpoint, and an
exact resume with the controller's state."""

import dataclasses
import json
import math

import pytest
import torch

import saescope
from saescope.data import ArticleTask, ArticleTaskConfig
from saescope.errors import ConfigError
from saescope.evaluate import evaluate
from saescope.metrics import max_cosine_per_feature
from saescope.runs import DataSpec, build_sae, train_run
from saescope.saes import make_sae
from saescope.training import TrainConfig, train
from saescope.training.checkpoint import read_meta
from saescope.training.target import GAIN, PROPORTIONAL, L0Controller, controller_for
from tests.training.test_checkpoint import _assert_same_saes, _stopped_then_resumed, _uninterrupted

STEERED = ("relu", "gated", "jumprelu")


def test_the_controller_raises_the_coefficient_above_target_and_lowers_it_below():
    c = L0Controller(target=4.0, base=2.0)
    assert c.coef == 2.0  # before its first update: the config's coefficient
    c.update(8.0, 1.0)  # running L0 8, twice the target
    e = math.log(2.0)
    assert c.integral == pytest.approx(GAIN * e)
    assert c.coef == pytest.approx(2.0 * math.exp(GAIN * e + PROPORTIONAL * e))
    for _ in range(200):  # far below for long: the error is clipped, the coefficient falls
        c.update(0.5, 1.0)
    assert c.error() == -1.0 and c.coef < 2.0
    assert c.integral == pytest.approx(GAIN * e - GAIN * 200, abs=GAIN * 20)
    before = c.integral
    c.update(100.0, 0.0)  # no learning rate, no integral step (no wind-up while it decays)
    assert c.integral == before
    c.update(0.0, 1.0)  # every latent silent: still a finite step
    assert math.isfinite(c.log_scale)
    again = L0Controller(target=4.0, base=2.0)
    again.load(json.loads(json.dumps(c.state())))
    assert again.coef == c.coef  # the checkpoint's JSON keeps it exactly


def test_a_controller_only_where_a_coefficient_meets_the_target():
    for arch in STEERED:
        sae = make_sae({"architecture": arch, "d_in": 6, "d_sae": 16, "target_l0": 3})
        assert controller_for(sae) is not None
        assert controller_for(make_sae({"architecture": arch, "d_in": 6, "d_sae": 16})) is None
    topk = make_sae({"architecture": "topk", "d_in": 6, "d_sae": 16, "k": 3, "target_l0": 3})
    assert controller_for(topk) is None


@pytest.mark.parametrize("target", [0, -1.5, 16, 20])
def test_a_target_outside_the_latents_is_one_line(target):
    with pytest.raises(ConfigError, match="target_l0 must be above 0 and below d_sae=16") as e:
        make_sae({"architecture": "relu", "d_in": 6, "d_sae": 16, "target_l0": target})
    assert "\n" not in str(e.value)


def test_k_that_contradicts_the_target_is_refused():
    with pytest.raises(ConfigError, match="k=5 contradicts target_l0=3"):
        make_sae({"architecture": "topk", "d_in": 6, "d_sae": 16, "k": 5, "target_l0": 3})
    ok = make_sae({"architecture": "batchtopk", "d_in": 6, "d_sae": 16, "k": 2.5, "target_l0": 2.5})
    assert ok.cfg.k == 2.5


TASK = ArticleTaskConfig(d_in=8, n_features=12, min_active=2, max_active=4)


@pytest.fixture(scope="module")
def steered(tmp_path_factory):
    """relu, gated and jumprelu from their default coefficients with target L0 6 (twice the
    truth, 3)."""
    out = tmp_path_factory.mktemp("steered")
    torch.manual_seed(0)
    saes = [
        make_sae({"architecture": a, "d_in": 8, "d_sae": 32, "target_l0": 6.0}) for a in STEERED
    ]
    cfg = TrainConfig(steps=600, log_every=25, progress=False)
    result = train(saes, ArticleTask(TASK, batch_size=256), cfg, out)
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    return out, result, rows


@pytest.mark.slow
def test_the_running_l0_settles_at_the_target(steered):
    _, result, rows = steered
    for i, arch in enumerate(STEERED):
        mine = [r for r in rows if r["sae"] == i]
        late = [r["l0"] for r in mine if r["step"] > 400]
        assert abs(sum(late) / len(late) - 6.0) <= 0.6, (arch, late)
        coefs = [r["sparsity_coef"] for r in mine]
        assert coefs[-1] == getattr(result.saes[i].cfg, result.saes[i].cfg.sparsity_coef)
        # it was steered (relu's coefficient moves 1.47x at the default rate, 0.018 here)
        assert max(coefs) > 1.3 * min(coefs), (arch, coefs)


@pytest.mark.slow
def test_saved_saes_record_the_target_and_the_coefficient_reached(steered):
    out, result, _ = steered
    for i, arch in enumerate(STEERED):
        folder = out / f"sae_{i}"
        cfg = json.loads((folder / "cfg.json").read_text())
        name = result.saes[i].cfg.sparsity_coef
        record = cfg["metadata"]["target_l0"]
        assert cfg["target_l0"] == 6.0 and record["target"] == 6.0, arch
        assert cfg[name] == record["reached"] == getattr(result.saes[i].cfg, name)
        assert record["coefficient"] == name and record["start"] != record["reached"]
        assert abs(record["running_l0"] - 6.0) <= 0.6
        assert saescope.load(folder).cfg == result.saes[i].cfg
    saved = read_meta(out)["saes"]
    assert all("integral" in s["controller"] for s in saved)
    assert all(s["cfg"]["target_l0"] == 6.0 for s in saved)


def test_an_sae_without_a_target_writes_no_target_anywhere(tmp_path):
    sae = make_sae({"architecture": "relu", "d_in": 8, "d_sae": 16})
    cfg = TrainConfig(steps=4, log_every=2, init_samples=64, progress=False)
    train(sae, ArticleTask(TASK, batch_size=64), cfg, tmp_path)
    saved = json.loads((tmp_path / "cfg.json").read_text())
    assert "target_l0" not in saved and "target_l0" not in saved["metadata"]
    assert "sparsity_coef" not in (tmp_path / "metrics.jsonl").read_text()


def test_resume_with_the_controller_is_bitwise(tmp_path):
    """Stopped after step 23, past the warm-up (the controller moving), and resumed: the same
    weights and the same coefficient as an uninterrupted run."""
    configs = [
        {"architecture": a, "d_in": 6, "d_sae": 24, "target_l0": 2.5, "l1_coef": 3.0}
        if a != "jumprelu"
        else {"architecture": a, "d_in": 6, "d_sae": 24, "target_l0": 2.5}
        for a in STEERED
    ]
    task = ArticleTask(ArticleTaskConfig(d_in=6, n_features=16), batch_size=64)
    cfg = TrainConfig(steps=40, checkpoint_every=0, checkpoint_minutes=1e-9, progress=False)
    cfg = dataclasses.replace(cfg, init_samples=128, sparsity_warmup=0.25)
    resumed = _stopped_then_resumed(configs, task, cfg, 23, tmp_path / "run")
    whole = _uninterrupted(configs, task, cfg)
    _assert_same_saes(whole, resumed)
    assert [s.cfg for s in resumed] == [s.cfg for s in whole]
    assert all(s.cfg != make_sae(c).cfg for s, c in zip(whole, configs, strict=True))


# ----- the acceptance claim: only the target given, on a hidden-style task -------------------

HIDDEN = ArticleTaskConfig(d_in=32, n_features=48)  # 1-3 active: true mean L0 2
"""Issue 18's hidden-style task: 48 unit features in 32-D, d_sae 96, feature seeds 100-102
(the demo's are 0-2, its sizes 4-D and 40 in 32-D)."""
GROUPS = {"steered": STEERED, "k": ("topk", "batchtopk", "matryoshka")}
"""Every architecture, in two passes (each about half the time; two workers take one each)."""
ALL = (*STEERED, *GROUPS["k"])
# Every architecture recovers all 48 features on feature seeds 100-102 (relu since it resamples
# at a third of the dead window, every steps/12: before, it missed one on feature seed 101;
# Matryoshka since its prefix losses are weighted by prefix size squared: with uniform weights
# its first prefixes, 12 and 24 latents, learnt blends and it recovered 34-39).
# docs/RESULTS.md has the numbers.


@pytest.fixture(scope="module", params=sorted(GROUPS))
def hidden(request, claim_seed):
    """One group's SAEs with --target-l0 2 and every other setting at its default (3,000
    steps of 1,024 tokens, d_sae given as 96), in one pass: per architecture the evaluation
    and the number of true features a decoder row matches at cosine >= 0.99."""
    task = dataclasses.replace(HIDDEN, feature_seed=100 + claim_seed)
    data = DataSpec.synthetic(task, 100 + claim_seed)
    stream = data.open(1024)
    archs = GROUPS[request.param]
    saes = []
    for arch in archs:
        torch.manual_seed(claim_seed * 1000 + ALL.index(arch))
        saes.append(build_sae(arch, stream, d_sae=96, target_l0=task.mean_active))
    cfg = TrainConfig(seed=claim_seed, progress=False)
    trained = train_run(saes, data, stream, cfg, None).saes
    held = data.held_out(32_768)
    out = {}
    for sae in trained:
        row = evaluate(sae, held.batches, 32_768, features=held.features)
        best = max_cosine_per_feature(sae.W_dec.detach(), held.features)
        out[sae.cfg.name] = {**row, "recovered": int((best >= 0.99).sum())}
    return out


@pytest.mark.claim
@pytest.mark.heavy  # about 130 s of CPU: `make claims` only
def test_only_the_target_given_reaches_it_and_recovers_every_feature(hidden):
    for arch, row in hidden.items():
        if arch in STEERED:
            assert abs(row["l0"] - HIDDEN.mean_active) <= 0.1 * HIDDEN.mean_active, (arch, row)
        assert row["recovered"] == HIDDEN.n_features, (arch, row)
        assert row["min_feature_cosine"] >= 0.99, (arch, row)

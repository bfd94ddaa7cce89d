"""The Matryoshka BatchTopK SAE: its config, each prefix's loss by hand, the sparse path
against the float64 reference, and training on the seed task through the one loop."""

import json

import pytest
import torch

from saescope import metrics
from saescope.data import ArticleTask, ArticleTaskConfig
from saescope.errors import ConfigError
from saescope.evaluate import evaluate
from saescope.saes import LossContext, MatryoshkaConfig, config_from_dict, make_sae
from saescope.saes.matryoshka import default_group_sizes
from saescope.training import TrainConfig, train
from tests.reference import matryoshka_terms


def _cfg(**kw) -> dict:
    return {"architecture": "matryoshka", "d_in": 2, "d_sae": 4, **kw}


def test_default_groups_nest_at_an_eighth_a_quarter_and_a_half():
    cfg = MatryoshkaConfig(d_in=8, d_sae=64, k=4)
    assert cfg.group_sizes == (8, 8, 16, 32) and cfg.prefixes == (8, 16, 32, 64)
    assert default_group_sizes(2) == (1, 1)  # small dictionaries: fewer groups, none empty
    assert default_group_sizes(5) == (1, 1, 3)
    assert cfg.prefix_weights == "squared"
    assert cfg.weights == pytest.approx([1 / 85, 4 / 85, 16 / 85, 64 / 85])


def test_a_file_saved_before_prefix_weights_loads_with_the_uniform_weights_it_trained_with(
    tmp_path,
):
    sae = make_sae(_cfg(k=1, group_sizes=[1, 1, 2]))
    sae.save(tmp_path / "new")
    assert type(sae).load(tmp_path / "new").cfg == sae.cfg  # the default is written out
    sae.save(tmp_path / "old")
    file = tmp_path / "old" / "cfg.json"
    saved = json.loads(file.read_text())
    del saved["prefix_weights"]  # as written before the field existed
    file.write_text(json.dumps(saved))
    old = type(sae).load(tmp_path / "old").cfg
    assert old.prefix_weights == "uniform" and old.weights == pytest.approx([1 / 3] * 3)


def test_group_sizes_from_json_and_the_command_line_and_bad_ones_refused():
    as_json = config_from_dict(_cfg(k=1, group_sizes=[1, 1, 2]))
    assert as_json == config_from_dict(_cfg(k=1, group_sizes="1,1,2"))
    assert as_json.group_sizes == (1, 1, 2) and as_json.prefixes == (1, 2, 4)
    with pytest.raises(ConfigError, match=r"sum to d_sae=4, got \[1, 1\] \(sum 2\)"):
        config_from_dict(_cfg(k=1, group_sizes=[1, 1]))
    with pytest.raises(ConfigError, match="positive"):
        config_from_dict(_cfg(k=1, group_sizes=[0, 4]))
    with pytest.raises(ConfigError, match="whole numbers"):
        config_from_dict(_cfg(k=1, group_sizes=[1.5, 2.5]))
    with pytest.raises(ConfigError, match="whole numbers"):
        config_from_dict(_cfg(k=1, group_sizes="one,three"))
    with pytest.raises(ConfigError, match="prefix_weights must be one of squared, uniform"):
        config_from_dict(_cfg(k=1, prefix_weights="even"))


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_each_prefix_decodes_with_b_dec_and_its_own_latents(mode):
    """Codes f = (3, 2, 1, 0.5) (W_enc = 0, so they are b_enc; k = 4 keeps all four), groups
    (1, 1, 2), decoder rows (1,0), (0,1), (.6,.8), (.8,-.6), b_dec = (1, 0), y = (4, 1):
    prefix 1 decodes (4, 0), error 0 + 1 = 1; prefix 2 (4, 2), error 1; prefix 4
    (5, 2.5), error 1 + 2.25 = 3.25. The mse term weighs them by prefix size squared,
    (1 + 4 + 16 * 3.25) / 21, or ("uniform") is their mean, 5.25 / 3."""
    sae = make_sae(_cfg(k=4, group_sizes=[1, 1, 2])).double()
    sae.sparse_mode = mode
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.copy_(torch.tensor([3.0, 2.0, 1.0, 0.5]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, -0.6]]))
        sae.b_dec.copy_(torch.tensor([1.0, 0.0]))
    y = torch.tensor([[4.0, 1.0]], dtype=torch.float64)
    out = sae.loss(y, y)
    torch.testing.assert_close(out.extras["prefix_mse"], torch.tensor([1.0, 1.0, 3.25]).double())
    assert float(out.terms["mse"].detach()) == pytest.approx(57 / 21)
    uniform = make_sae(_cfg(k=4, group_sizes=[1, 1, 2], prefix_weights="uniform")).double()
    uniform.sparse_mode = mode
    uniform.load_state_dict(sae.state_dict())
    assert float(uniform.loss(y, y).terms["mse"].detach()) == pytest.approx(5.25 / 3)
    torch.testing.assert_close(out.y_hat, torch.tensor([[5.0, 2.5]], dtype=torch.float64))
    assert float(out.terms["auxk"].detach()) == 0.0  # no dead latents given


def test_one_group_is_batchtopk():
    """With a single group the loss is BatchTopK's, term by term."""
    torch.manual_seed(1)
    mat = make_sae({"architecture": "matryoshka", "d_in": 6, "d_sae": 16, "k": 3,
                    "group_sizes": [16]})  # fmt: skip
    btk = make_sae({"architecture": "batchtopk", "d_in": 6, "d_sae": 16, "k": 3})
    btk.load_state_dict(mat.state_dict())
    x = torch.randn(40, 6)
    dead = torch.arange(16) % 3 == 0
    a, b = mat.loss(x, x, LossContext(dead=dead)), btk.loss(x, x, LossContext(dead=dead))
    for name in ("mse", "auxk"):
        torch.testing.assert_close(a.terms[name], b.terms[name])


def _grads(term: torch.Tensor, params: dict) -> list[torch.Tensor]:
    """d term / d each parameter, zeros where it does not reach."""
    grads = torch.autograd.grad(term, list(params.values()), retain_graph=True, allow_unused=True)
    return [
        torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads, strict=True)
    ]


@pytest.mark.parametrize("transcoder", [False, True])
def test_sparse_path_matches_the_float64_reference(transcoder):
    """The sparse path (prefix patterns, decode_error per prefix, AuxK) gives the reference's
    values and gradients, with dead latents so AuxK is live."""
    torch.manual_seed(2)
    d_out = 5 if transcoder else 12
    cfg = {"architecture": "matryoshka", "d_in": 12, "d_sae": 48, "k": 4, "d_out": d_out,
           "apply_b_dec_to_input": not transcoder, "group_sizes": [6, 6, 12, 24]}  # fmt: skip
    sae = make_sae(cfg).double()
    sae.sparse_mode = "sparse"
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(0, 0.3)
    x = torch.randn(64, 12, dtype=torch.float64)
    y = torch.randn(64, d_out, dtype=torch.float64) if transcoder else x
    dead = torch.arange(48) % 5 == 0
    out = sae.loss(x, y, LossContext(dead=dead))
    assert out.f is None and out.codes is not None  # the sparse path ran
    params = dict(sae.named_parameters())
    ref_params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    ref = matryoshka_terms(ref_params, x, y, sae.cfg.to_dict(), 1.0, dead)
    for name in ("mse", "auxk"):
        torch.testing.assert_close(out.terms[name], ref[name])
        ours = _grads(out.terms[name], params)
        theirs = _grads(ref[name], ref_params)
        for key, a, b in zip(params, ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=f"{name} d/d{key}")


@pytest.mark.slow
def test_training_on_the_seed_task_recovers_the_features():
    """Through the one training loop, on a 32-features-in-16-D version of the seed task, a
    Matryoshka SAE 1.5x wider than the true dictionary (groups 8, 8, 16, 16) finds the true
    directions (best-match cosine) and its settled threshold gives eval-mode L0 near k. (At
    exactly 32 latents the first groups learn blends of features: mean best-match cosine
    0.90 against BatchTopK's 0.99 on seeds 0-2, the nested loss's known trade-off.)"""
    task_cfg = ArticleTaskConfig(d_in=16, n_features=32)
    cfg = {"architecture": "matryoshka", "d_in": 16, "d_sae": 48, "k": 2, "aux_coef": 0.5,
           "group_sizes": [8, 8, 16, 16]}  # fmt: skip
    result = train(
        make_sae(cfg),
        ArticleTask(task_cfg, batch_size=512),
        TrainConfig(steps=800, lr=3e-3, lr_decay_start=0.5, progress=False),
    )
    sae, features = result.saes[0], ArticleTask(task_cfg).features
    best = metrics.max_cosine_per_feature(sae.W_dec.detach(), features)
    assert float(best.mean()) > 0.93, best
    assert metrics.fraction_recovered(sae.W_dec.detach(), features) > 0.8, best
    held_out = ArticleTask(task_cfg, batch_size=8192, seed=1000)
    l0 = evaluate(sae, held_out, max_tokens=8192)["l0"]
    assert abs(l0 - 2) < 0.5, l0
    assert result.final_metrics[0]["threshold_settled"] is True


def test_sparse_and_dense_paths_agree_in_float32():
    """The kernels' path (float32, where they run) against plain dense autograd."""
    torch.manual_seed(3)
    sae = make_sae({"architecture": "matryoshka", "d_in": 64, "d_sae": 512, "k": 8})
    x = torch.randn(256, 64)
    dead = torch.arange(512) % 7 == 0
    results = []
    for mode in ("sparse", "dense"):
        sae.sparse_mode = mode
        out = sae.loss(x, x, LossContext(dead=dead))
        results.append((out, _grads(out.total, dict(sae.named_parameters()))))
    (sp, g_sp), (de, g_de) = results
    assert sp.codes is not None and de.f is not None
    torch.testing.assert_close(
        sp.extras["prefix_mse"], de.extras["prefix_mse"], rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(sp.terms["auxk"], de.terms["auxk"], rtol=1e-4, atol=1e-6)
    for a, b in zip(g_sp, g_de, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


def test_auto_mode_takes_the_sparse_path_when_big_and_sparse():
    big = make_sae({"architecture": "matryoshka", "d_in": 64, "d_sae": 512, "k": 8})
    small = make_sae({"architecture": "matryoshka", "d_in": 6, "d_sae": 16, "k": 3})
    x = torch.randn(32, 64)
    assert big.loss(x, x).codes is not None
    assert small.loss(x[:, :6], x[:, :6]).codes is None


@pytest.mark.filterwarnings("ignore::saescope.saes.batchtopk.ThresholdWarning")
def test_a_stopped_run_resumes_bitwise(tmp_path):
    """Its config (a tuple of group sizes) passes the checkpoint's same-run check, and the
    threshold's running average comes back with the weights: on the sparse path (auto)."""
    from saescope.data import RowBatches
    from tests.training.test_checkpoint import (
        _assert_same_saes,
        _stopped_then_resumed,
        _uninterrupted,
    )

    configs = [{"architecture": "matryoshka", "d_in": 32, "d_sae": 512, "k": 4,
                "group_sizes": [64, 64, 128, 256]}]  # fmt: skip
    stream = RowBatches(torch.randn(2048, 32, generator=torch.Generator().manual_seed(0)), 128)
    cfg = TrainConfig(steps=12, checkpoint_every=5, init_samples=128, progress=False)
    resumed = _stopped_then_resumed(configs, stream, cfg, 5, tmp_path / "run")
    _assert_same_saes(_uninterrupted(configs, stream, cfg), resumed)
    assert float(resumed[0].threshold[0]) > 0


def test_dictionary_learnings_matryoshka_maps_directly():
    """dictionary_learning's MatryoshkaBatchTopKSAE (saved by the library, tests/fixtures/):
    its tensors, k, group_sizes and scalar threshold copied across give its own encode and
    forward outputs exactly."""
    from pathlib import Path

    from safetensors.torch import load_file

    folder = Path(__file__).parents[1] / "fixtures/dictionary_learning/MatryoshkaBatchTopKSAE"
    state = torch.load(folder / "ae.pt", weights_only=True)
    expected = load_file(folder / "expected.safetensors")
    d_in, d_sae = state["W_enc"].shape
    sae = make_sae(
        {
            "architecture": "matryoshka",
            "d_in": d_in,
            "d_sae": d_sae,
            "k": int(state["k"]),
            "group_sizes": state["group_sizes"].tolist(),
        }
    )
    assert len(sae.cfg.prefixes) > 1 and float(state["threshold"]) > 0
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(state[name])
        sae.threshold.fill_(float(state["threshold"]))
        sae.eval()
        x = expected["x"]
        torch.testing.assert_close(sae.encode(x), expected["f"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(sae(x), expected["x_hat"], rtol=1e-4, atol=1e-5)

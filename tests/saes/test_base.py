"""The skip connection every architecture may have (SAEConfig.skip_connection): W_skip
(d_out, d_in), zeros at init; forward = decode(encode(x)) + x W_skip^T with decode unchanged;
trained in the one loop through the target y - x W_skip^T (float64 gradients against the
independent reference, a finite-difference check, sparse path = dense path); saved, folded and
evaluated with it; files without the key load as before."""

import itertools
import json

import pytest
import torch

import saescope
from saescope.data import ArticleTask, ArticleTaskConfig
from saescope.errors import ConfigError
from saescope.evaluate import evaluate
from saescope.saes import ARCHITECTURES, LossContext, make_sae
from saescope.training import TrainConfig, train
from tests.conftest import small_config
from tests.reference import REFERENCE

F64 = torch.float64


def _skip_sae(arch, transcoder=False, dtype=torch.float32):
    kw = {"d_out": 3, "apply_b_dec_to_input": False} if transcoder else {}
    sae = make_sae(small_config(arch, skip_connection=True, **kw)).to(dtype)
    with torch.no_grad():
        sae.W_skip.normal_(0, 0.3)
        sae.b_dec.normal_()
        for name, p in sae.named_parameters():
            if name.startswith(("b_enc", "b_gate", "b_mag", "r_mag")):
                p.normal_(0, 0.3)
    return sae


@pytest.mark.parametrize("transcoder", [False, True])
def test_w_skip_zero_at_init_and_only_when_on(arch, transcoder):
    kw = {"d_out": 3, "apply_b_dec_to_input": False} if transcoder else {}
    sae = make_sae(small_config(arch, skip_connection=True, **kw))
    assert sae.W_skip.shape == (sae.cfg.d_out, 6) and not sae.W_skip.any()
    plain = make_sae(small_config(arch, **kw))
    assert plain.W_skip is None and "W_skip" not in plain.state_dict()


@pytest.mark.parametrize("transcoder", [False, True])
def test_forward_adds_the_skip_and_decode_does_not(arch, transcoder):
    sae = _skip_sae(arch, transcoder).eval()
    x = torch.randn(4, 5, 6)  # leading dimensions too
    with torch.no_grad():
        f = sae.encode(x)
        torch.testing.assert_close(sae(x), f @ sae.W_dec + sae.b_dec + x @ sae.W_skip.T)
        torch.testing.assert_close(sae.decode(f), f @ sae.W_dec + sae.b_dec)
        torch.testing.assert_close(sae.reconstruct(f, x), sae(x))


def test_config_checked():
    with pytest.raises(ConfigError, match="skip_connection must be true or false"):
        make_sae(small_config("topk", skip_connection="yes"))


def _grad_terms() -> list[tuple[str, str]]:
    x = torch.randn(8, 6)
    return [
        (a, t)
        for a in sorted(ARCHITECTURES)
        for t in sorted(make_sae(small_config(a)).loss(x, x).terms)
    ]


@pytest.mark.parametrize(("arch", "name"), _grad_terms())
@pytest.mark.parametrize("transcoder", [False, True])
def test_gradients_match_float64_reference(arch, name, transcoder):
    """Each term and each parameter's gradient, W_skip's included, equals the reference's on
    the target y - x W_skip^T (gated's gate_aux: that target frozen, as its decoder is)."""
    sae = _skip_sae(arch, transcoder, F64)
    dead = torch.zeros(16, dtype=torch.bool)
    dead[::3] = True
    x = torch.randn(40, 6, dtype=F64)
    y = torch.randn(40, 3, dtype=F64) if transcoder else x
    ctx = LossContext(sparsity_scale=0.7, dead=dead)
    ours = sae.loss(x, y, ctx).terms[name]
    params = dict(sae.named_parameters())
    ref = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    target = y - x @ ref["W_skip"].T
    if name == "gate_aux":
        target = target.detach()
    theirs = REFERENCE[arch](ref, x, target, sae.cfg.to_dict(), 0.7, dead)[name]
    torch.testing.assert_close(ours, theirs)
    g_ours = torch.autograd.grad(ours, list(params.values()), allow_unused=True)
    g_ref = torch.autograd.grad(theirs, list(ref.values()), allow_unused=True)
    for key, a, b in zip(params, g_ours, g_ref, strict=True):
        a = torch.zeros_like(params[key]) if a is None else a
        b = torch.zeros_like(params[key]) if b is None else b
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=f"{arch} {name} d/d{key}")
    if name == "mse":
        assert g_ours[list(params).index("W_skip")].abs().sum() > 0


def test_mse_is_the_forward_error_and_w_skip_gradient_by_finite_differences():
    sae = _skip_sae("topk", dtype=F64).eval()
    x, y = torch.randn(30, 6, dtype=F64), torch.randn(30, 6, dtype=F64)
    out = sae.loss(x, y)
    torch.testing.assert_close(out.terms["mse"], (y - sae(x)).pow(2).sum(-1).mean())
    torch.testing.assert_close(out.y_hat, sae(x))

    def mse(w_skip):
        f = sae.encode(x)
        return (y - (f @ sae.W_dec + sae.b_dec + x @ w_skip.T)).pow(2).sum(-1).mean()

    w = sae.W_skip.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(mse, (w,))
    (g,) = torch.autograd.grad(sae.loss(x, y).terms["mse"], [sae.W_skip])
    torch.testing.assert_close(g, torch.autograd.grad(mse(w), [w])[0], rtol=1e-9, atol=1e-12)


SPARSE_CASES = {
    "topk": {"k": 3},
    "batchtopk": {"k": 3},
    "matryoshka": {"k": 3},
    "relu": {},
    "jumprelu": {},
}


@pytest.mark.parametrize("arch", sorted(SPARSE_CASES))
def test_sparse_path_equals_dense_path(arch):
    dense = _skip_sae(arch, dtype=F64)
    ours = make_sae(small_config(arch, skip_connection=True)).double()
    ours.load_state_dict(dense.state_dict())
    dense.sparse_mode, ours.sparse_mode = "dense", "sparse"
    x = torch.randn(48, 6, dtype=F64)
    dead = torch.zeros(16, dtype=torch.bool)
    dead[::3] = True
    a, b = ours.loss(x, x, LossContext(dead=dead)), dense.loss(x, x, LossContext(dead=dead))
    assert a.codes is not None and b.codes is None
    torch.testing.assert_close(a.y_hat, b.y_hat, rtol=1e-9, atol=1e-12)
    ga = torch.autograd.grad(a.total, list(ours.parameters()), allow_unused=True)
    gb = torch.autograd.grad(b.total, list(dense.parameters()), allow_unused=True)
    for (name, p), u, v in zip(ours.named_parameters(), ga, gb, strict=True):
        u = torch.zeros_like(p) if u is None else u
        v = torch.zeros_like(p) if v is None else v
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.slow
def test_trained_skip_learns_folds_saves_and_evaluates(tmp_path):
    """A transcoder whose target is a linear map of x plus sparse features: W_skip learns the
    map; the folded SAE takes raw data (equal to the live module on scaled data); save/load
    is exact; evaluate scores forward's output."""
    torch.manual_seed(0)
    task = ArticleTask(ArticleTaskConfig(d_in=6, n_features=12), batch_size=256)
    linear = torch.randn(4, 6)

    def batches():
        for i in itertools.count():
            x = task.batch(i)[0] * 3.0
            yield x, x @ linear.T * 0.5

    cfg = {"d_out": 4, "apply_b_dec_to_input": False, "skip_connection": True}
    sae = make_sae(small_config("topk", **cfg))
    result = train(sae, batches(), TrainConfig(steps=150, lr=1e-2, progress=False))
    folded = result.saes[0]
    x, _ = task.batch(10_000)
    x = x * 3.0
    y = x @ linear.T * 0.5
    with torch.no_grad():
        rel = (folded(x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
        assert rel < 0.05  # the linear target is in W_skip's reach
        s_in = float((folded.W_enc / sae.W_enc).mean())  # the scales train folded in
        s_out = float((sae.W_dec / folded.W_dec).mean())
        assert s_in != pytest.approx(s_out)  # so folding W_skip is tested
        live = sae.eval()(x * s_in) / s_out  # the module trained on scaled data
        torch.testing.assert_close(folded(x), live, rtol=1e-4, atol=1e-4)
    assert folded.W_skip.abs().sum() > 0
    saescope.save(folded, tmp_path / "sae")
    assert json.loads((tmp_path / "sae" / "cfg.json").read_text())["skip_connection"] is True
    loaded = saescope.load(tmp_path / "sae")
    with torch.no_grad():
        assert torch.equal(loaded(x), folded(x))
    scores = evaluate(loaded, [(x, y)])
    with torch.no_grad():
        mse = (loaded(x) - y).pow(2).sum(-1).mean()
    assert scores["mse"] == pytest.approx(float(mse), rel=1e-5)


def test_files_without_the_key_load(tmp_path):
    """A plain SAE's cfg.json has no skip_connection key (as before it existed) and loads."""
    sae = make_sae(small_config("topk"))
    saescope.save(sae, tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert "skip_connection" not in cfg
    loaded = saescope.load(tmp_path / "sae")
    assert loaded.cfg == sae.cfg and loaded.W_skip is None

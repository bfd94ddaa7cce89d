"""The contract every architecture in ARCHITECTURES meets."""

import pytest
import torch

import saescope
from saescope.data import ArticleTask, ArticleTaskConfig
from saescope.saes import ARCHITECTURES, LossContext, make_sae
from saescope.training import TrainConfig, train
from tests.conftest import small_config
from tests.reference import REFERENCE


def test_every_architecture_has_a_reference():
    assert set(REFERENCE) == set(ARCHITECTURES)


def test_shapes(arch):
    sae = make_sae(small_config(arch))
    x = torch.randn(32, 6)
    f = sae.encode(x)
    assert f.shape == (32, 16)
    assert sae.decode(f).shape == (32, 6)
    out = sae.loss(x, x)
    assert out.y_hat.shape == (32, 6) and out.f.shape == (32, 16)
    assert out.total.ndim == 0


def test_leading_dimensions(arch):
    """(B, S, d_in) works like (B*S, d_in); top-k is never taken over the wrong axis."""
    sae = make_sae(small_config(arch)).eval()
    x = torch.randn(4, 8, 6)
    f = sae.encode(x)
    assert f.shape == (4, 8, 16)
    torch.testing.assert_close(f.reshape(32, 16), sae.encode(x.reshape(32, 6)))


def test_forward_is_decode_of_encode(arch):
    sae = make_sae(small_config(arch))
    x = torch.randn(64, 6)
    for mode in (True, False):
        sae.train(mode)
        torch.testing.assert_close(sae(x), sae.decode(sae.encode(x)))


def test_transcoder_shapes(arch):
    sae = make_sae(small_config(arch, d_out=3, apply_b_dec_to_input=False))
    x, y = torch.randn(20, 6), torch.randn(20, 3)
    assert sae(x).shape == (20, 3)
    out = sae.loss(x, y)
    out.total.backward()
    assert sae.W_dec.grad.shape == (16, 3)


def test_save_load_roundtrip(arch, tmp_path):
    task = ArticleTask(ArticleTaskConfig(d_in=6), batch_size=128)
    sae = train(make_sae(small_config(arch)), task, TrainConfig(steps=30, progress=False)).saes[0]
    saescope.save(sae, tmp_path / "sae")
    loaded = saescope.load(tmp_path / "sae")
    assert type(loaded) is type(sae) and loaded.cfg == sae.cfg
    x = torch.randn(200, 6)
    sae.eval()
    torch.testing.assert_close(loaded(x), sae(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x), rtol=0, atol=0)


def test_loss_falls_within_100_steps(arch):
    task = ArticleTask(ArticleTaskConfig(d_in=6, n_features=12), batch_size=256)
    result = train(
        make_sae(small_config(arch)),
        task,
        TrainConfig(steps=100, log_every=10, progress=False, lr=3e-3),
    )
    x, _ = task.batch(10_000)
    untrained = make_sae(small_config(arch))
    # Compare the trained SAE with an untrained one of the same shape on held-out data.
    assert torch.nn.functional.mse_loss(result.saes[0](x), x) < 0.5 * torch.nn.functional.mse_loss(
        untrained(x), x
    )


def test_decoder_norms_stay_unit_where_required(arch):
    sae = make_sae(small_config(arch))
    task = ArticleTask(ArticleTaskConfig(d_in=6), batch_size=128)
    # train() returns folded copies; inspect the live module it trained instead.
    train(sae, task, TrainConfig(steps=40, progress=False))
    norms = sae.W_dec.detach().norm(dim=1)
    if sae.cfg.unit_norm_decoder:
        torch.testing.assert_close(norms, torch.ones_like(norms))


def test_weighted_relu_has_free_decoder_norms():
    sae = make_sae(small_config("relu", l1_mode="weighted"))
    assert not sae.cfg.unit_norm_decoder
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.full((16,), 0.1))


def _float64_params(sae):
    return {k: v.detach().clone().requires_grad_(True) for k, v in sae.named_parameters()}


def _terms_and_dead(arch):
    sae = make_sae(small_config(arch)).double()
    with torch.no_grad():
        sae.b_dec.normal_()
        for name, p in sae.named_parameters():
            if name.startswith(("b_enc", "b_gate", "b_mag", "r_mag")):
                p.normal_(0, 0.3)
    dead = torch.zeros(16, dtype=torch.bool)
    dead[::3] = True
    return sae, dead


def _all_terms() -> list[tuple[str, str]]:
    x = torch.randn(8, 6)
    return [
        (a, t)
        for a in sorted(ARCHITECTURES)
        for t in sorted(make_sae(small_config(a)).loss(x, x).terms)
    ]


@pytest.mark.parametrize(("arch", "name"), _all_terms())
def test_gradients_match_float64_reference(arch, name):
    """Every loss term's gradient (AuxK, gated aux and the JumpReLU STE included) equals an
    independent float64 implementation's, on fresh random inputs."""
    sae, dead = _terms_and_dead(arch)
    x = torch.randn(40, 6, dtype=torch.float64)
    ctx = LossContext(sparsity_scale=0.7, dead=dead)
    ours = sae.loss(x, x, ctx).terms
    params = dict(sae.named_parameters())
    ref_params = _float64_params(sae)
    cfg = sae.cfg.to_dict()
    theirs = REFERENCE[arch](ref_params, x, x, cfg, 0.7, dead)
    assert set(theirs) == set(ours)
    torch.testing.assert_close(ours[name], theirs[name])
    if not ours[name].requires_grad:
        pytest.fail(f"{arch} {name} has no gradient")
    g_ours = torch.autograd.grad(ours[name], list(params.values()), allow_unused=True)
    g_ref = torch.autograd.grad(theirs[name], list(ref_params.values()), allow_unused=True)
    nonzero = False
    for key, a, b in zip(params, g_ours, g_ref, strict=True):
        a = torch.zeros_like(params[key]) if a is None else a
        b = torch.zeros_like(params[key]) if b is None else b
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=f"{arch} {name} d/d{key}")
        nonzero |= bool(a.abs().sum() > 0)
    assert nonzero, f"{arch} {name}: all gradients are zero"


def test_auxk_gradient_reaches_the_encoder():
    for arch in ("topk", "batchtopk"):
        sae, dead = _terms_and_dead(arch)
        x = torch.randn(40, 6, dtype=torch.float64)
        aux = sae.loss(x, x, LossContext(dead=dead)).terms["auxk"]
        (g_enc,) = torch.autograd.grad(aux, [sae.W_enc])
        assert g_enc[:, dead].abs().sum() > 0  # dead latents' encoder columns learn
        assert g_enc[:, ~dead].abs().sum() == 0


def test_a_second_architecture_under_a_taken_name_is_refused():
    from dataclasses import dataclass
    from typing import ClassVar

    from saescope.saes import SAE, ReLUConfig

    @dataclass(frozen=True)
    class Again(ReLUConfig):
        name: ClassVar[str] = "relu"

    with pytest.raises(TypeError, match="'relu' is taken by ReLUSAE"):

        class Copy(SAE):
            config_cls = Again

            def _encode(self, x):
                return x

            def _loss(self, x, y, ctx=None):
                raise NotImplementedError

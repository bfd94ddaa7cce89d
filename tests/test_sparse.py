"""The sparse TopK path against plain dense autograd, in float64 at rtol 1e-9."""

import pytest
import torch

from saescope import ops
from saescope.saes import LossContext, make_sae
from saescope.sparse import (
    densify,
    sparse_decode,
    topk_encode_sparse,
    topk_encode_sparse_aux,
    topk_sae_forward_sparse,
)

F64 = torch.float64
TOL = {"rtol": 1e-9, "atol": 1e-12}


def _leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, dtype=F64) * scale).requires_grad_(True)


def _close_grads(loss_a, leaves_a, loss_b, leaves_b, names):
    ga = torch.autograd.grad(loss_a, leaves_a, allow_unused=True)
    gb = torch.autograd.grad(loss_b, leaves_b, allow_unused=True)
    for name, a, b, leaf in zip(names[: len(ga)], ga, gb, leaves_a, strict=True):
        a = torch.zeros_like(leaf) if a is None else a
        b = torch.zeros_like(leaf) if b is None else b
        torch.testing.assert_close(a, b, **TOL, msg=f"d/d{name}")


@pytest.mark.parametrize(("n", "m", "d", "k"), [(7, 5, 3, 1), (33, 40, 6, 3), (20, 16, 10, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_decode_matches_dense(n, m, d, k, bias):
    idx = torch.rand(n, m).argsort(1)[:, :k]  # distinct within a row, unsorted
    vals, W_dec = _leaf(n, k), _leaf(m, d)
    b_dec = _leaf(d) if bias else None
    R = torch.randn(n, d, dtype=F64)
    out = sparse_decode(idx, vals, W_dec, b_dec)
    leaves = [vals, W_dec] + ([b_dec] if bias else [])
    ref_leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
    f = torch.zeros(n, m, dtype=F64).scatter(1, idx, ref_leaves[0])
    ref = f @ ref_leaves[1] + (ref_leaves[2] if bias else 0)
    torch.testing.assert_close(out, ref, **TOL)
    _close_grads((out * R).sum(), leaves, (ref * R).sum(), ref_leaves, ["vals", "W_dec", "b_dec"])


def test_decode_backward_with_an_expanded_gradient():
    idx = torch.rand(9, 12).argsort(1)[:, :4]
    vals, W_dec = _leaf(9, 4), _leaf(12, 5)
    sparse_decode(idx, vals, W_dec, None).sum().backward()  # grad_out is a stride-0 view
    ref_vals, ref_W = vals.detach().requires_grad_(True), W_dec.detach().requires_grad_(True)
    (densify(idx, ref_vals, 12) @ ref_W).sum().backward()
    torch.testing.assert_close(vals.grad, ref_vals.grad, **TOL)
    torch.testing.assert_close(W_dec.grad, ref_W.grad, **TOL)


@pytest.mark.parametrize(
    ("n", "d", "m", "k"), [(7, 3, 5, 1), (40, 6, 16, 3), (25, 8, 30, 30), (64, 10, 100, 12)]
)
@pytest.mark.parametrize("centre", [True, False])
@pytest.mark.parametrize("x_grad", [True, False])
def test_encode_matches_dense(n, d, m, k, centre, x_grad):
    x = torch.randn(n, d, dtype=F64).requires_grad_(x_grad)
    W_enc, b_enc, b_dec = _leaf(d, m), _leaf(m, scale=0.5), _leaf(d)
    leaves = [x, W_enc, b_enc, b_dec]
    ref_leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in leaves]
    R = torch.randn(n, m, dtype=F64)

    idx, vals = topk_encode_sparse(x, W_enc, b_enc, b_dec if centre else None, k)
    rx, rW, rb, rbd = ref_leaves
    f_ref = ops.topk_activation(((rx - rbd) if centre else rx) @ rW + rb, k)
    f = densify(idx, vals, m)
    torch.testing.assert_close(f, f_ref, **TOL)
    assert idx.shape == vals.shape == (n, k) and bool((idx.diff(dim=1) > 0).all())
    if k == m:
        assert bool((vals == 0).any())  # the ReLU mask is exercised
    start = 0 if x_grad else 1  # x is the only leaf that may not need a gradient
    names = ["x", "W_enc", "b_enc", "b_dec"][start:]
    _close_grads((f * R).sum(), leaves[start:], (f_ref * R).sum(), ref_leaves[start:], names)


def _topk_sae(d_in, d_sae, k, k_aux, **kw):
    sae = make_sae(
        {"architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": k, "k_aux": k_aux, **kw}
    ).double()
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(0, 0.3)
    return sae


def _sparse_terms(sae, x, y, dead):
    out = topk_sae_forward_sparse(sae, x, dead)
    terms = {"mse": sae.mse(y, out.y_hat)}
    if out.aux_hat is None:
        terms["auxk"] = x.new_zeros(())
    else:
        e = (y - out.y_hat).detach()
        terms["auxk"] = sae.cfg.aux_coef * ops.normalised_mse(e - out.aux_hat, e)
    return out, terms


@pytest.mark.parametrize(
    ("d_in", "d_sae", "k", "k_aux", "transcoder"),
    [
        (6, 16, 3, 3, False),
        (8, 32, 1, 4, False),
        (5, 12, 12, 2, False),  # every latent active: all dead ones overlap the top-k
        (10, 64, 8, 40, False),  # k_aux clamped to the number of dead latents
        (6, 20, 4, 3, True),
    ],
)
def test_topk_sae_loss_matches_dense(d_in, d_sae, k, k_aux, transcoder):
    """MSE and AuxK terms through the sparse path equal TopKSAE.loss, value and gradient."""
    kw = {"d_out": 3, "apply_b_dec_to_input": False} if transcoder else {}
    sae = _topk_sae(d_in, d_sae, k, k_aux, **kw)
    x = torch.randn(48, d_in, dtype=F64)
    y = torch.randn(48, 3, dtype=F64) if transcoder else x
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[::3] = True
    dense = sae.loss(x, y, LossContext(dead=dead))
    out, ours = _sparse_terms(sae, x, y, dead)
    torch.testing.assert_close(densify(out.idx, out.vals, d_sae), dense.f, **TOL)
    torch.testing.assert_close(out.y_hat, dense.y_hat, **TOL)
    assert bool(torch.isin(out.aux_idx, out.idx).any())  # main and AuxK share latents
    params = dict(sae.named_parameters())
    for name in ("mse", "auxk"):
        torch.testing.assert_close(ours[name], dense.terms[name], **TOL)
        kw = {"retain_graph": True, "allow_unused": True}
        g_ours = torch.autograd.grad(ours[name], list(params.values()), **kw)
        g_dense = torch.autograd.grad(dense.terms[name], list(params.values()), **kw)
        for key, a, b in zip(params, g_ours, g_dense, strict=True):
            assert (a is None) == (b is None), f"{name} d/d{key}"
            if a is not None:
                torch.testing.assert_close(a, b, **TOL, msg=f"{name} d/d{key}")
    (g_enc,) = torch.autograd.grad(ours["auxk"], [sae.W_enc])
    assert g_enc[:, dead].abs().sum() > 0  # the dead latents' encoder columns learn
    assert g_enc[:, ~dead].abs().sum() == 0


def test_no_dead_latents_means_no_auxk():
    sae = _topk_sae(6, 16, 3, 3)
    x = torch.randn(20, 6, dtype=F64)
    for dead in (None, torch.zeros(16, dtype=torch.bool)):
        out = topk_sae_forward_sparse(sae, x, dead)
        assert out.aux_hat is None and out.aux_idx is None
        torch.testing.assert_close(out.y_hat, sae(x), **TOL)


def test_aux_selection_matches_ops():
    x = torch.randn(30, 6, dtype=F64)
    W_enc, b_enc, b_dec = _leaf(6, 24), _leaf(24), _leaf(6)
    dead = torch.rand(24) < 0.4
    _, _, aux_idx, aux_vals = topk_encode_sparse_aux(x, W_enc, b_enc, b_dec, 3, dead, 5)
    pre = (x - b_dec) @ W_enc + b_enc
    torch.testing.assert_close(densify(aux_idx, aux_vals, 24), ops.auxk_topk(pre, dead, 5))


def test_backward_keeps_no_n_by_d_sae_tensor():
    """Every tensor the sparse path saves for backward is far smaller than N x d_sae; the
    dense path, measured the same way, does save one (so the probe works)."""
    n, d_sae = 128, 256
    sae = _topk_sae(8, d_sae, 4, 4)
    x = torch.randn(n, 8, dtype=F64)
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[::5] = True

    def largest_saved(fn) -> int:
        sizes: list[int] = []

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return max(sizes)

    assert largest_saved(lambda: topk_sae_forward_sparse(sae, x, dead)) < n * d_sae // 4
    assert largest_saved(lambda: sae.loss(x, x, LossContext(dead=dead))) >= n * d_sae

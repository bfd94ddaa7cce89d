"""The sparse path against plain dense autograd, in float64 at rtol 1e-9: the primitives,
every chooser, and every loss term of every architecture that has a sparse path."""

import pytest
import torch

from saescope import native, ops, sparse
from saescope.errors import ConfigError
from saescope.saes import LossContext, make_sae
from saescope.saes.base import SPARSE_MAX_DENSITY
from saescope.sparse import Pattern

F64 = torch.float64
TOL = {"rtol": 1e-9, "atol": 1e-12}


@pytest.fixture(autouse=True, params=["kernels", "torch"])
def _path(request, monkeypatch):
    """Every test twice: with the compiled kernels (where they build) and in plain torch."""
    if request.param == "torch":
        monkeypatch.setenv("SAESCOPE_NATIVE", "0")
    return request.param


def _leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, dtype=F64) * scale).requires_grad_(True)


def _twins(*leaves: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_(t.requires_grad) for t in leaves]


def _assert_same_grads(loss_a, leaves_a, loss_b, leaves_b, names, label=""):
    kw = {"retain_graph": True, "allow_unused": True}
    ga = torch.autograd.grad(loss_a, leaves_a, **kw)
    gb = torch.autograd.grad(loss_b, leaves_b, **kw)
    for name, a, b, leaf in zip(names[: len(ga)], ga, gb, leaves_a, strict=True):
        a = torch.zeros_like(leaf) if a is None else a
        b = torch.zeros_like(leaf) if b is None else b
        torch.testing.assert_close(a, b, **TOL, msg=f"{label} d/d{name}")


def _random_pattern(n: int, m: int, density: float) -> Pattern:
    flat = (torch.rand(n * m) < density).nonzero().squeeze(1)
    return Pattern.from_flat(flat, n, m)


# ----- primitives ----------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "m", "d", "density"), [(7, 5, 3, 0.3), (33, 40, 6, 0.1)])
@pytest.mark.parametrize("bias", [True, False])
def test_decode_error_matches_decode_and_mse(n, m, d, density, bias):
    p = _random_pattern(n, m, density)
    vals, W_dec, y = _leaf(p.nnz), _leaf(m, d), _leaf(n, d)
    b_dec = _leaf(d) if bias else None
    y_hat, mse = sparse.decode_error(p, vals, W_dec, b_dec, y)
    leaves = [vals, W_dec, y] + ([b_dec] if bias else [])
    ref_leaves = _twins(*leaves)
    ref_hat = p.dense(ref_leaves[0]) @ ref_leaves[1] + (ref_leaves[3] if bias else 0)
    ref = (ref_hat - ref_leaves[2]).pow(2).sum(-1).mean()
    torch.testing.assert_close(y_hat, ref_hat.detach(), **TOL)
    torch.testing.assert_close(mse, ref, **TOL)
    assert not y_hat.requires_grad
    names = ["vals", "W_dec", "y", "b_dec"]
    _assert_same_grads(3.0 * mse, leaves, 3.0 * ref, ref_leaves, names)


@pytest.mark.parametrize(
    ("n", "m", "d", "density"),
    [(7, 5, 3, 0.3), (33, 40, 6, 0.1), (20, 16, 10, 1.0), (9, 12, 4, 0.0)],
)
@pytest.mark.parametrize("bias", [True, False])
def test_decode_matches_dense(n, m, d, density, bias):
    p = _random_pattern(n, m, density)
    vals, W_dec = _leaf(p.nnz), _leaf(m, d)
    b_dec = _leaf(d) if bias else None
    R = torch.randn(n, d, dtype=F64)
    out = sparse.decode(p, vals, W_dec, b_dec)
    leaves = [vals, W_dec] + ([b_dec] if bias else [])
    ref_leaves = _twins(*leaves)
    ref = p.dense(ref_leaves[0]) @ ref_leaves[1] + (ref_leaves[2] if bias else 0)
    torch.testing.assert_close(out, ref, **TOL)
    if p.nnz:
        names = ["vals", "W_dec", "b_dec"]
        _assert_same_grads((out * R).sum(), leaves, (ref * R).sum(), ref_leaves, names)


def test_decode_backward_with_an_expanded_gradient():
    p = Pattern.fixed(torch.rand(9, 12).argsort(1)[:, :4].sort(1).values, 12)
    vals, W_dec = _leaf(p.nnz), _leaf(12, 5)
    sparse.decode(p, vals, W_dec, None).sum().backward()  # grad_out is a stride-0 view
    ref_vals, ref_W = _twins(vals, W_dec)
    (p.dense(ref_vals) @ ref_W).sum().backward()
    torch.testing.assert_close(vals.grad, ref_vals.grad, **TOL)
    torch.testing.assert_close(W_dec.grad, ref_W.grad, **TOL)


def test_pattern_rows_and_dense_agree():
    p = _random_pattern(11, 7, 0.4)
    vals = torch.arange(1.0, p.nnz + 1, dtype=F64)
    dense = p.dense(vals)
    rows, cols = dense.nonzero(as_tuple=True)
    assert torch.equal(rows, p.rows) and torch.equal(cols, p.col)
    tcrow, order = p.by_latent
    assert torch.equal(p.col[order], cols.sort(stable=True).values)
    assert torch.equal(tcrow.diff(), torch.bincount(p.col, minlength=7))


# ----- choosers through the encoder ----------------------------------------------------------


def _dense_selection(name: str, pre: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """The boolean (N, M) mask each chooser should pick, computed independently."""
    n, m = pre.shape
    if name == "topk":
        idx = pre.topk(3, dim=-1).indices
        return torch.zeros(n, m, dtype=torch.bool).scatter(1, idx, True)
    if name == "batch_topk":
        idx = pre.flatten().topk(2 * n).indices
        return torch.zeros(n * m, dtype=torch.bool).scatter(0, idx, True).view(n, m)
    if name == "above":
        return pre > 0.2
    idx = pre.masked_fill(~dead, float("-inf")).topk(4, dim=-1).indices
    return torch.zeros(n, m, dtype=torch.bool).scatter(1, idx, True)


def _chooser(name: str, n: int, dead: torch.Tensor) -> sparse.Chooser:
    return {
        "topk": lambda: sparse.topk(3),
        "batch_topk": lambda: sparse.batch_topk(2 * n),
        "above": lambda: sparse.above(0.2),
        "aux_topk": lambda: sparse.aux_topk(dead, 4),
    }[name]()


@pytest.mark.parametrize("name", ["topk", "batch_topk", "above", "aux_topk"])
@pytest.mark.parametrize("centre", [True, False])
@pytest.mark.parametrize("x_grad", [True, False])
def test_encode_matches_dense(name, centre, x_grad):
    n, d, m = 40, 6, 16
    x = torch.randn(n, d, dtype=F64).requires_grad_(x_grad)
    W_enc, b_enc, b_dec = _leaf(d, m), _leaf(m, scale=0.5), _leaf(d)
    dead = torch.rand(m) < 0.4
    leaves = [x, W_enc, b_enc, b_dec]
    ref = _twins(*leaves)
    ((p, z),) = sparse.encode(x, W_enc, b_enc, b_dec if centre else None, [_chooser(name, n, dead)])
    pre = ((ref[0] - ref[3]) if centre else ref[0]) @ ref[1] + ref[2]
    mask = _dense_selection(name, pre.detach(), dead)
    assert torch.equal(p.dense(torch.ones(p.nnz, dtype=torch.bool)), mask)
    torch.testing.assert_close(p.dense(z), pre * mask, **TOL)
    R = torch.randn(n, m, dtype=F64)
    start = 0 if x_grad else 1
    names = ["x", "W_enc", "b_enc", "b_dec"][start:]
    _assert_same_grads(
        (p.dense(z) * R).sum(), leaves[start:], (pre * mask * R).sum(), ref[start:], names
    )


def test_two_choosers_share_one_product():
    """Gradients of two selections from one encode call add up (main + AuxK)."""
    n, d, m = 30, 5, 20
    x = torch.randn(n, d, dtype=F64)
    W_enc, b_enc, b_dec = _leaf(d, m), _leaf(m), _leaf(d)
    dead = torch.rand(m) < 0.5
    (p1, z1), (p2, z2) = sparse.encode(
        x, W_enc, b_enc, b_dec, [sparse.topk(3), sparse.aux_topk(dead, 4)]
    )
    ref = _twins(W_enc, b_enc, b_dec)
    pre = (x - ref[2]) @ ref[0] + ref[1]
    m1 = _dense_selection("topk", pre.detach(), dead)
    m2 = _dense_selection("aux_topk", pre.detach(), dead)
    R1, R2 = torch.randn(n, m, dtype=F64), torch.randn(n, m, dtype=F64)
    ours = (p1.dense(z1) * R1).sum() + (p2.dense(z2).relu() * R2).sum()
    theirs = (pre * m1 * R1).sum() + ((pre * m2).relu() * R2).sum()
    _assert_same_grads(ours, [W_enc, b_enc, b_dec], theirs, ref, ["W_enc", "b_enc", "b_dec"])


# ----- every architecture's loss terms -------------------------------------------------------

CASES = {
    "topk": {"architecture": "topk", "k": 3, "k_aux": 4},
    "topk_all_live": {"architecture": "topk", "k": 12, "k_aux": 2},
    "topk_aux_clamped": {"architecture": "topk", "k": 2, "k_aux": 40},
    "batchtopk": {"architecture": "batchtopk", "k": 2.5, "k_aux": 3},
    "relu": {"architecture": "relu", "l1_coef": 0.7},
    "relu_weighted": {"architecture": "relu", "l1_coef": 0.7, "l1_mode": "weighted"},
    "jumprelu": {"architecture": "jumprelu", "l0_coef": 0.4, "bandwidth": 0.3},
}


def _pair(case: str, transcoder: bool):
    cfg = {"d_in": 6, "d_sae": 12, **CASES[case]}
    if transcoder:
        cfg |= {"d_out": 4, "apply_b_dec_to_input": False}
    dense = make_sae(cfg).double()
    with torch.no_grad():  # non-zero biases, so centring and b_enc matter
        for p in dense.parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.3)
        if case == "jumprelu":
            dense.log_threshold.copy_(torch.rand(12, dtype=F64).mul(0.5).add(0.05).log())
    ours = make_sae(cfg).double()
    ours.load_state_dict(dense.state_dict())
    dense.sparse_mode, ours.sparse_mode = "dense", "sparse"
    return dense, ours


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("transcoder", [False, True])
def test_loss_terms_match_dense(case, transcoder):
    """Each loss term separately: value and gradient of every parameter, sparse = dense;
    dead latents present so AuxK runs; the codes, L0 and fired latents agree."""
    dense, ours = _pair(case, transcoder)
    x = torch.randn(48, 6, dtype=F64)
    y = torch.randn(48, 4, dtype=F64) if transcoder else x
    dead = torch.zeros(12, dtype=torch.bool)
    dead[::3] = True
    ctx = LossContext(sparsity_scale=0.8, dead=dead)
    a, b = ours.loss(x, y, ctx), dense.loss(x, y, ctx)
    assert a.f is None and a.codes is not None
    torch.testing.assert_close(a.dense_f(), b.dense_f(), **TOL)
    torch.testing.assert_close(a.y_hat, b.y_hat, **TOL)
    assert a.l0() == pytest.approx(b.l0()) and torch.equal(a.fired(), b.fired())
    assert a.terms.keys() == b.terms.keys()
    names = [n for n, _ in ours.named_parameters()]
    for term in a.terms:
        torch.testing.assert_close(a.terms[term], b.terms[term], **TOL, msg=term)
        _assert_same_grads(
            a.terms[term],
            list(ours.parameters()),
            b.terms[term],
            list(dense.parameters()),
            names,
            term,
        )
    for key in b.extras:
        torch.testing.assert_close(a.extras[key], b.extras[key], **TOL)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_auxk_gradient_reaches_the_dead_encoder_columns(arch):
    _, ours = _pair(arch, False)
    x = torch.randn(40, 6, dtype=F64)
    dead = torch.zeros(12, dtype=torch.bool)
    dead[::4] = True
    out = ours.loss(x, x, LossContext(dead=dead))
    (g,) = torch.autograd.grad(out.terms["auxk"], [ours.W_enc])
    assert g[:, dead].abs().sum() > 0
    assert g[:, ~dead].abs().sum() == 0


def test_no_dead_latents_means_no_auxk():
    _, ours = _pair("topk", False)
    x = torch.randn(20, 6, dtype=F64)
    for dead in (None, torch.zeros(12, dtype=torch.bool)):
        out = ours.loss(x, x, LossContext(dead=dead))
        assert float(out.terms["auxk"]) == 0.0
        torch.testing.assert_close(out.y_hat, ours(x), **TOL)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu"])
def test_backward_keeps_no_n_by_d_sae_tensor(arch):
    """Every tensor the sparse path saves for backward is far smaller than N x d_sae; the
    dense path, measured the same way, does save one (so the probe works)."""
    n, d_sae = 128, 256
    extra = {"topk": {"k": 4}, "batchtopk": {"k": 4}}.get(arch, {})
    sae = make_sae({"architecture": arch, "d_in": 8, "d_sae": d_sae, **extra}).double()
    with torch.no_grad():
        sae.b_enc.fill_(-1.5)  # ReLU / JumpReLU: few live codes
    x = torch.randn(n, 8, dtype=F64)
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[::5] = True

    def largest_saved(mode: str) -> int:
        sizes: list[int] = []

        def pack(t):
            sizes.append(t.numel())
            return t

        sae.sparse_mode = mode
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            sae.loss(x, x, LossContext(dead=dead))
        return max(sizes)

    assert largest_saved("sparse") < n * d_sae // 4
    assert largest_saved("dense") >= n * d_sae


def test_auto_mode_switches_on_live_density():
    """ReLU starts dense (density unknown), then goes sparse once few codes are live."""
    sae = make_sae({"architecture": "relu", "d_in": 64, "d_sae": 1024})
    x = torch.randn(32, 64)
    out = sae.loss(x, x)
    assert out.f is not None and sae.live_density > 0.3
    with torch.no_grad():
        sae.b_enc.fill_(-4.0)
    sae.loss(x, x)  # dense, measures the new density
    assert sae.live_density < SPARSE_MAX_DENSITY
    assert sae.loss(x, x).codes is not None
    small = make_sae({"architecture": "topk", "d_in": 8, "d_sae": 16, "k": 1})
    assert small.loss(torch.randn(4, 8), torch.randn(4, 8)).f is not None  # too small


def test_bad_sparse_mode_is_a_clear_error():
    sae = make_sae({"architecture": "topk", "d_in": 8, "d_sae": 16, "k": 2})
    sae.sparse_mode = "fast"
    with pytest.raises(ConfigError, match="sparse_mode must be one of"):
        sae.loss(torch.randn(4, 8), torch.randn(4, 8))


def test_batch_topk_count_is_shared():
    assert ops.batch_topk_count(2.5, 10, 100) == 25
    assert ops.batch_topk_count(0.01, 10, 100) == 1
    assert ops.batch_topk_count(50, 10, 20) == 200
    assert ops.batch_topk_count(2.7, 8, 32) == 21  # SAELens's int(2.7 * 8) = int(21.6), not 22


@pytest.mark.parametrize("skew", ["none", "row", "sample"])
def test_batch_topk_is_exact(skew):
    """The sampled cut agrees with a flat top-k: on plain data, with one row far larger than
    the rest, and with the sampled entries far larger (the cut then overshoots and the
    flat search runs)."""
    pre = torch.randn(64, 200)
    if skew == "row":
        pre[5] *= 100.0
    if skew == "sample":
        pre.view(-1)[::61] += 100.0  # 210 entries: fewer than n_keep for k >= 4
    for k in (1, 3, 7):
        p = sparse.batch_topk(64 * k)(pre.clone())
        want = pre.flatten().topk(64 * k).indices.sort().values
        assert torch.equal(p.flat, want)


def test_two_threads_training_at_once_do_not_share_a_buffer():
    """Each thread gets its own pre-activation buffer: two SAEs in two threads give what
    each gives alone."""
    import threading

    saes = [make_sae({"architecture": "topk", "d_in": 64, "d_sae": 512, "k": 8}) for _ in "ab"]
    xs = [torch.randn(256, 64) for _ in "ab"]
    alone = [s.loss(x, x).y_hat for s, x in zip(saes, xs, strict=True)]
    out: dict[int, torch.Tensor] = {}

    def run(i: int) -> None:
        for _ in range(20):
            out[i] = saes[i].loss(xs[i], xs[i]).y_hat

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        torch.testing.assert_close(out[i], alone[i])
    sparse.release_buffers()


@pytest.mark.parametrize("dead_frac", [0.2, 0.5, 0.8])
def test_aux_topk_gathered_and_masked_agree_with_dense(dead_frac):
    """Few dead latents: their columns are gathered; many: pre is masked. Same choice."""
    pre = torch.randn(30, 40)
    dead = torch.rand(40) < dead_frac
    p = sparse.aux_topk(dead, 4)(pre.clone())
    assert torch.equal(
        p.dense(torch.ones(p.nnz, dtype=torch.bool)), _dense_selection("aux", pre, dead)
    )


def test_batches_of_changing_size_reuse_the_buffer_correctly():
    """A short last batch, then full ones again: each loss equals the dense path's."""
    sae = make_sae({"architecture": "topk", "d_in": 32, "d_sae": 1024, "k": 4})
    for n in (100, 37, 100):
        x = torch.randn(n, 32)
        sae.sparse_mode = "sparse"
        ours = sae.loss(x, x).y_hat
        sae.sparse_mode = "dense"
        torch.testing.assert_close(ours, sae.loss(x, x).y_hat)
    sparse.release_buffers()


@pytest.mark.parametrize("skew", ["none", "sampled_rows"])
def test_batch_topk_fused_samples_rows_and_stays_exact(skew):
    """With at least 4 x stride rows the fused cut is estimated from every stride-th row;
    the answer is still the flat top-k, and a sample far above the rest (the cut then
    overshoots) makes it decline, leaving it to the exact search."""
    if not native.available():
        pytest.skip("the fused choosers run on the kernels")
    raw, bias = torch.randn(300, 64), torch.randn(64)
    if skew == "sampled_rows":
        raw[::61] += 100.0  # 5 rows x 64 = 320 entries: fewer than n_keep
    chooser = sparse.batch_topk(300 * 3)
    got = chooser.fused(raw, bias)
    want = (raw + bias).flatten().topk(300 * 3).indices.sort().values
    if skew == "sampled_rows":
        assert got is None
        assert torch.equal(chooser(raw + bias).flat, want)
    else:
        p, vals = got
        assert torch.equal(p.flat, want)
        assert torch.equal(vals, (raw + bias).flatten()[want])

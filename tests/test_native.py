"""The compiled kernels (saescope.native) against plain torch: exact choices, ties, NaN,
strided rows, both thread paths, and the build cache."""

import os
import shutil

import pytest
import torch

from saescope import make_sae, native, ops, sparse

needs_kernels = pytest.mark.skipif(
    not native.available(), reason="no C compiler here: the torch path runs instead"
)


def test_kernels_build_wherever_there_is_a_compiler():
    if os.environ.get("SAESCOPE_NATIVE") == "0":
        pytest.skip("SAESCOPE_NATIVE=0 turns the kernels off")
    if shutil.which("cc") or shutil.which("gcc"):
        assert native.available()


def _stable_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Reference: the k largest per row, ties to the lower index, ascending indices."""
    m = pre.shape[1]
    out = []
    for row in pre.tolist():
        best = sorted(range(m), key=lambda j: (-row[j], j))[:k]
        out.append(sorted(best))
    return torch.tensor(out, dtype=torch.int64)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("n", "m", "k"), [(5, 7, 7), (9, 40, 1), (33, 300, 17), (70, 2048, 32)])
def test_topk_bias_matches_torch(dtype, n, m, k):
    g = torch.Generator().manual_seed(n * m + k)
    wide = torch.randn(n, m + 5, generator=g, dtype=dtype)
    a = wide[:, 2 : 2 + m]  # rows with a stride larger than their length
    b = torch.randn(m, generator=g, dtype=dtype)
    idx, val = native.topk_bias(a, b, k)
    pre = a + b
    ref = pre.topk(k, dim=1).indices.sort(dim=1).values
    assert torch.equal(idx, ref)
    assert torch.equal(val, pre.gather(1, ref))


@needs_kernels
def test_topk_bias_ties_go_to_the_lower_latent():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-2, 3, (40, 90), generator=g).float()  # few distinct values
    for k in (1, 5, 30, 90):
        idx, val = native.topk_bias(a, torch.zeros(90), k)
        assert torch.equal(idx, _stable_topk(a, k)), k
        assert torch.equal(val, a.gather(1, idx))


@needs_kernels
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_topk_bias_declines_rows_that_are_not_finite(bad):
    a = torch.randn(10, 100)
    a[3, 57] = bad
    assert native.topk_bias(a, torch.zeros(100), 4) is None


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("inclusive", [False, True])
@pytest.mark.parametrize("per_latent", [False, True])
def test_above_bias_matches_torch(dtype, inclusive, per_latent):
    g = torch.Generator().manual_seed(1)
    n, m = 130, 77
    a = torch.randn(n, m, generator=g, dtype=dtype)
    a[0, :] = 0.5  # a row of exact ties with the scalar threshold
    b = torch.randn(m, generator=g, dtype=dtype) * 0.1
    t = torch.rand(m, generator=g, dtype=dtype) if per_latent else 0.5
    crow, col, val = native.above_bias(a, torch.zeros_like(b), t, inclusive)
    mask = (a >= t) if inclusive else (a > t)
    flat = mask.view(-1).nonzero().squeeze(1)
    assert torch.equal(col, flat % m)
    assert torch.equal(crow.diff(), mask.sum(1))
    assert torch.equal(val, a.view(-1)[flat])
    crow, col, val = native.above_bias(a, b, t, inclusive)
    pre = a + b
    mask = (pre >= t) if inclusive else (pre > t)
    assert torch.equal(col, mask.view(-1).nonzero().squeeze(1) % m)
    assert torch.equal(val, pre[mask])


@needs_kernels
def test_above_bias_refuses_a_threshold_of_the_wrong_length():
    with pytest.raises(ValueError, match="threshold of shape"):
        native.above_bias(torch.randn(4, 6), torch.zeros(6), torch.zeros(5))
    crow, _, _ = native.above_bias(torch.randn(4, 6), torch.zeros(6), torch.zeros(1))
    assert crow.shape == (5,)  # one value counts as a scalar


def _pattern(n: int, m: int, k: int):
    from saescope.sparse import Pattern

    g = torch.Generator().manual_seed(n + m)
    idx = torch.rand(n, m, generator=g).topk(k, dim=1).indices.sort(dim=1).values
    return Pattern.fixed(idx, m), g


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decode_backward_matches_dense(dtype):
    p, g = _pattern(50, 30, 4)
    vals = torch.randn(p.nnz, generator=g, dtype=dtype)
    grad_out = torch.randn(50, 13, generator=g, dtype=dtype)
    W_dec = torch.randn(30, 13, generator=g, dtype=dtype)
    tcrow, order = p.by_latent
    gvals, gw = native.decode_backward(tcrow, order, p.rows, vals, grad_out, W_dec)
    f = p.dense(vals)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 0}
    torch.testing.assert_close(gw, f.t() @ grad_out, **tol)
    torch.testing.assert_close(gvals, (grad_out @ W_dec.t()).view(-1)[p.flat], **tol)


@needs_kernels
def test_pattern_dot_and_remove_parallel_match_torch(monkeypatch):
    p, g = _pattern(40, 25, 3)
    y = torch.randn(40, 9, generator=g, dtype=torch.float64)
    table = torch.randn(25, 9, generator=g, dtype=torch.float64)
    ref = (y @ table.t()).view(-1)[p.flat]
    torch.testing.assert_close(native.pattern_dot(p.crow, p.col, y, table), ref)
    w = torch.randn(25, 9, generator=g, dtype=torch.float64)
    grad = torch.randn(25, 9, generator=g, dtype=torch.float64)
    fast = ops.remove_parallel_grad_(w, grad.clone())
    monkeypatch.setenv("SAESCOPE_NATIVE", "0")
    slow = ops.remove_parallel_grad_(w, grad.clone())
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-14)
    assert torch.linalg.vecdot(fast, w).abs().max() < 1e-12


@needs_kernels
def test_python_threads_split_rows_like_openmp(monkeypatch):
    """Without OpenMP the rows go to worker threads in ranges; the answers are the same."""
    a = torch.randn(600, 500)
    b = torch.randn(500)
    want_topk = native.topk_bias(a, b, 9)
    want_above = native.above_bias(a, b, 1.5)
    p, g = _pattern(300, 200, 5)
    y = torch.randn(300, 16, generator=g, dtype=torch.float64)
    table = torch.randn(200, 16, generator=g, dtype=torch.float64)
    want_dot = native.pattern_dot(p.crow, p.col, y, table)
    monkeypatch.setattr(native.library(), "saescope_openmp", lambda: 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    got = native.topk_bias(a, b, 9)
    assert want_topk is not None and got is not None
    assert all(torch.equal(x, z) for x, z in zip(want_topk, got, strict=True))
    got_above = native.above_bias(a, b, 1.5)
    assert all(torch.equal(x, z) for x, z in zip(want_above, got_above, strict=True))
    assert torch.equal(native.pattern_dot(p.crow, p.col, y, table), want_dot)


def test_build_is_cached_and_atomic(tmp_path, monkeypatch):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("SAESCOPE_CACHE", str(tmp_path))
    flags = list(native._FLAGS)
    first = native._compile(cc, flags)
    assert first.parent == tmp_path / "kernels"
    stamp = first.stat().st_mtime_ns
    again = native._compile(cc, flags)
    assert again == first and again.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]  # no temp files
    other = native._compile(cc, [*flags, "-DSAESCOPE_VARIANT"])
    assert other != first  # the flags are part of the key


def test_off_switch_runs_the_torch_path(monkeypatch):
    monkeypatch.setenv("SAESCOPE_NATIVE", "0")
    assert not native.available()
    assert not native.usable(torch.zeros(2))


@needs_kernels
@pytest.mark.parametrize("d", [300, 256, 7])  # 128-column register blocks, then the rest
@pytest.mark.parametrize("bias", [True, False])
def test_decode_error_matches_torch_in_float32(d, bias):
    p, g = _pattern(64, 50, 6)
    vals = torch.randn(p.nnz, generator=g)
    W_dec = torch.randn(50, d, generator=g)
    b_dec = torch.randn(d, generator=g) if bias else None
    y = torch.randn(64, d, generator=g)
    y_hat, e, sq = native.decode_error(p.crow, p.col, vals, W_dec, b_dec, y)
    ref = p.dense(vals) @ W_dec + (b_dec if bias else 0)
    torch.testing.assert_close(y_hat, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e, ref - y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sq, (ref - y).pow(2).sum(1), rtol=1e-5, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("d", [300, 7])
def test_segment_sum_matches_embedding_bag(d):
    p, g = _pattern(70, 40, 5)
    tcrow, order = p.by_latent
    w = torch.randn(p.nnz, generator=g)
    y = torch.randn(70, d, generator=g)
    got = native.segment_sum(tcrow, order, p.rows, w, y)
    want = p.dense(w).t() @ y
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


KERNELS = (
    "topk_bias",
    "above_bias",
    "pattern_dot",
    "segment_sum",
    "decode_backward",
    "decode_error",
    "remove_parallel_",
)


def test_a_tensor_off_the_cpu_takes_the_torch_path_whatever_the_kernels():
    """`usable` is the one dispatch test: a meta (or CUDA) tensor never reaches a kernel,
    and every chooser's fused form declines it (torch then chooses)."""
    cpu, meta = torch.zeros(4, 8), torch.zeros(4, 8, device="meta")
    assert native.usable(cpu) == native.available()
    assert not native.usable(meta)
    assert not native.usable(cpu, meta)
    bias = torch.zeros(8, device="meta")
    for chooser in (sparse.TopK(2), sparse.BatchTopK(8), sparse.Above(0.0)):
        assert chooser.fused(meta, bias) is None, chooser


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu"])
def test_every_kernel_call_asks_usable_first(arch, monkeypatch):
    """With `usable` answering as it does for a CUDA tensor and every kernel raising, the
    sparse path (forward, backward, decoder-gradient projection) still runs: no caller goes
    to a kernel without asking, so on a GPU the torch path is taken."""
    monkeypatch.setattr(native, "usable", lambda *ts: False)
    for name in KERNELS:
        monkeypatch.setattr(native, name, _refuse(name))
    extra = {"topk": {"k": 4}, "batchtopk": {"k": 4}, "relu": {"l1_coef": 1.0}}
    torch.manual_seed(0)
    sae = make_sae({"architecture": arch, "d_in": 16, "d_sae": 64, **extra.get(arch, {})})
    sae.sparse_mode = "sparse"
    x = torch.randn(32, 16)
    out = sae.loss(x, x)
    out.total.backward()
    ops.remove_parallel_grad_(sae.W_dec.detach(), sae.W_dec.grad)
    assert ops.topk_indices(x, 3).shape == (32, 3)
    assert sae.W_enc.grad is not None and bool(torch.isfinite(sae.W_enc.grad).all())


def _refuse(name: str):
    def kernel(*args, **kwargs):
        raise AssertionError(f"kernel {name} called without native.usable")

    return kernel

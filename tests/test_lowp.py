"""The bfloat16 encoder product: its rounding (emulated and native agree), the cached copy of
the weight, float32 gradients, and the probe's forced answer."""

import pytest
import torch

from saescope import lowp


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).float()


def test_emulated_product_is_bf16_inputs_with_float32_sums():
    x, w = torch.randn(40, 24), torch.randn(24, 56)
    got = lowp.product(x, w, native=False)
    assert got.dtype == torch.float32
    assert torch.equal(got, _bf16(_bf16(x) @ _bf16(w)))
    exact = x @ w
    err = ((got - exact).abs() / exact.abs().clamp_min(1e-3)).median()
    assert 0 < err < 2**-6  # rounded, but only at bf16's precision


def test_native_product_agrees_with_the_emulation():
    x, w = torch.randn(16, 24), torch.randn(24, 32)  # small: slow where bf16 is not native
    native = lowp.product(x, w, native=True)
    emulated = lowp.product(x, w, native=False)
    assert native.dtype == torch.float32
    torch.testing.assert_close(native, emulated, rtol=2**-7, atol=1e-4)


def test_the_copy_is_made_again_after_the_weight_changes():
    w = torch.nn.Parameter(torch.randn(8, 16).t())  # latent-major, as W_enc is stored
    first = lowp.low_copy(w)
    assert lowp.low_copy(w) is first  # unchanged weight: the same copy
    assert first.stride() == w.stride() and first.dtype == torch.bfloat16
    with torch.no_grad():
        w.add_(1.0)  # an optimiser step, in place
    second = lowp.low_copy(w)
    assert second is not first
    assert torch.equal(second.float(), _bf16(w.detach()))
    lowp.release_copies()
    assert lowp.low_copy(w) is not second


def test_mm_gradients_are_float32_from_the_float32_operands():
    x = torch.randn(12, 8, requires_grad=True)
    w = torch.randn(8, 20, requires_grad=True)
    g = torch.randn(12, 20)
    lowp.mm(x, w).backward(g)
    assert x.grad.dtype == w.grad.dtype == torch.float32
    assert torch.equal(x.grad, g @ w.detach().t())
    assert torch.equal(w.grad, x.detach().t() @ g)


def test_the_probe_answer_can_be_forced(monkeypatch):
    monkeypatch.setenv(lowp.PROBE_ENV, "0.25")
    assert lowp.forced_speedup() == 0.25
    monkeypatch.setenv(lowp.PROBE_ENV, "fast")
    with pytest.raises(ValueError, match="give a number"):
        lowp.forced_speedup()
    monkeypatch.delenv(lowp.PROBE_ENV)
    assert lowp.forced_speedup() is None

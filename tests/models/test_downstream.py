"""Splicing into glassllm: CE loss recovered and KL behave at their ends and in between."""

import copy

import pytest
import torch

from saescope import metrics
from saescope.models import load_model
from saescope.models.downstream import downstream
from saescope.models.harvest import pack

TEXT = (
    "'Would you tell me, please, which way I ought to go from here?' 'That depends a good deal "
    "on where you want to get to,' said the Cat. 'I don't much care where--' said Alice. "
    "'Then it doesn't matter which way you go,' said the Cat. "
) * 6


@pytest.fixture(scope="module")
def glass():
    model, tok = load_model("glassllm")
    return model, pack(tok.encode(TEXT), 48)


def test_identity_recovers_everything_and_zeros_nothing(glass):
    model, ctx = glass
    same = downstream(model, ctx, "layers.2", lambda a: a)
    assert same["ce_spliced"] == same["ce_clean"] and same["kl_div"] == 0.0
    assert same["ce_loss_recovered"] == 1.0
    assert same["ce_zero"] > same["ce_clean"]  # in domain, the layer matters
    zero = downstream(model, ctx, "layers.2", torch.zeros_like)
    assert zero["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-6)
    noisy = downstream(model, ctx, "layers.2", lambda a: a + 0.5 * torch.randn_like(a))
    assert 0.0 < noisy["ce_loss_recovered"] < 1.0 and noisy["kl_div"] > 0.0


def test_substituting_a_module_by_its_input(glass):
    model, ctx = glass
    twin = copy.deepcopy(model.layers[1].mlp)  # a perfect "transcoder"
    out = downstream(model, ctx, "layers.1.mlp:in", twin, whole_module=True)
    assert out["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-6)
    assert out["kl_div"] == pytest.approx(0.0, abs=1e-6)
    wrong = downstream(model, ctx, "layers.1.mlp:in", lambda x: x, whole_module=True)
    assert wrong["kl_div"] > 0.01  # the MLP's input passed off as its output


def test_replacing_a_module_input_keeps_the_module(glass):
    """An SAE on `M:in` (no transcoder) reconstructs M's input; M then runs on it."""
    model, ctx = glass
    same = downstream(model, ctx, "layers.0.mlp:in", lambda x: x, keep_first=True)
    assert same["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-6)
    assert same["kl_div"] == pytest.approx(0.0, abs=1e-7)
    half = downstream(model, ctx, "layers.0.mlp:in", lambda x: 0.5 * x, keep_first=True)
    assert 0 < half["kl_div"] and half["ce_spliced"] != half["ce_clean"]


def test_ce_loss_recovered_formula():
    assert metrics.ce_loss_recovered(2.0, 2.5, 4.0) == pytest.approx(0.75)
    assert metrics.ce_loss_recovered(2.0, 2.0, 2.0) != metrics.ce_loss_recovered(2.0, 2.0, 2.0)

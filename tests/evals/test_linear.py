import pytest
import torch

from saescope.errors import InputError
from saescope.evals.linear import f1, fit_logistic


def _logistic_data(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    x = torch.randn(n, d, generator=g) * 3 + 5  # off-centre, not unit scale
    logits = 2 * (x - 5) @ w / w.norm()
    y = (torch.rand(n, generator=g) < torch.sigmoid(logits)).long()
    return x, y, w / w.norm()


def test_binary_probe_finds_the_true_direction():
    x, y, w = _logistic_data(4000, 8, 0)
    probe = fit_logistic(x, y, l2=1e-4)
    assert float(probe.direction(1) @ w) > 0.98
    assert float(probe.direction(0) @ w) < -0.98
    # the Bayes-optimal accuracy of this model is about 0.8; a probe near it is right
    assert probe.accuracy(x, y) > 0.75


def test_multinomial_probe_separates_classes():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(4, 16, generator=g) * 4
    y = torch.randint(4, (800,), generator=g)
    x = centres[y] + torch.randn(800, 16, generator=g)
    probe = fit_logistic(x[:600], y[:600], n_classes=4)
    assert probe.accuracy(x[600:], y[600:]) > 0.95
    assert probe.scores(x).shape == (800, 4)


def test_the_penalty_shrinks_the_weights():
    x, y, _ = _logistic_data(500, 8, 2)
    assert fit_logistic(x, y, l2=10).W.norm() < fit_logistic(x, y, l2=1e-3).W.norm()


def test_bad_input_is_one_line():
    with pytest.raises(InputError, match="rows x"):
        fit_logistic(torch.zeros(3, 2), torch.zeros(4))
    with pytest.raises(InputError, match="2 classes"):
        fit_logistic(torch.zeros(3, 2), torch.zeros(3), n_classes=1)


def test_f1():
    assert f1(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 1, 0])) == pytest.approx(0.5)
    assert f1(torch.zeros(3), torch.zeros(3)) == 0.0

"""The outlier rule: fitted on a sample's median norm, applied to every batch after."""

import math

import pytest
import torch

from saescope.data.outliers import DEFAULT_FACTOR, OutlierRule
from saescope.errors import ConfigError


def _rows_with_outliers(n=4000, d=16, every=500, scale=100.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[::every] *= scale
    return x


def test_the_rule_sets_aside_exactly_the_rows_far_above_the_median():
    x = _rows_with_outliers()
    rule = OutlierRule.fit(x, x, DEFAULT_FACTOR)
    median = float(x.norm(dim=1).median())
    assert rule.x_max == pytest.approx(DEFAULT_FACTOR * median) and rule.y_max is None
    kept, y, dropped = rule.split(x, x)
    assert dropped == 8 and kept.shape == (3992, 16) and y is kept
    assert torch.equal(rule.keep(x, x), x.norm(dim=1) <= rule.x_max)
    assert not rule.keep(x, x)[::500].any()


def test_a_clean_batch_passes_through_untouched():
    x = torch.randn(300, 8)
    rule = OutlierRule.fit(x, x, 10.0)
    kept, y, dropped = rule.split(x, x)
    assert kept is x and y is x and dropped == 0


def test_a_transcoder_sets_aside_rows_with_an_outlying_x_or_y():
    x, y = torch.randn(1000, 8), torch.randn(1000, 4)
    x[3] *= 50
    y[7] *= 50
    rule = OutlierRule.fit(x, y, 10.0)
    assert rule.y_max == pytest.approx(10 * float(y.norm(dim=1).median()))
    kx, ky, dropped = rule.split(x, y)
    assert dropped == 2 and kx.shape == (998, 8) and ky.shape == (998, 4)
    assert not torch.equal(kx, ky[:, :4].repeat(1, 2))  # rows stay paired, not y = x


def test_the_rule_round_trips_through_json():
    x = _rows_with_outliers()
    rule = OutlierRule.fit(x, x, 7.5)
    assert OutlierRule.from_dict(rule.to_dict()) == rule
    assert OutlierRule.from_dict(None) is None
    with pytest.raises(ConfigError, match="needs factor and x_max"):
        OutlierRule.from_dict({"factor": 3})


@pytest.mark.parametrize("bad", [1.0, 0.5, -3, math.inf, math.nan])
def test_a_factor_must_be_a_finite_multiple_above_one(bad):
    with pytest.raises(ConfigError, match="outlier_factor must be a number above 1"):
        OutlierRule.fit(torch.randn(10, 3), torch.randn(10, 3), bad)

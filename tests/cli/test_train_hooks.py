"""`saescope train --hook a,b`: which commands train hook points apart (`wanted`)."""

from __future__ import annotations

import argparse

import pytest

from saescope.cli import train_hooks
from saescope.errors import ConfigError


def _ns(hook=None, resume=False, out=None, parallel=None) -> argparse.Namespace:
    return argparse.Namespace(hook=hook, resume=resume, out=out, parallel=parallel)


def test_several_hook_points_train_apart_in_layers_mode(tmp_path):
    ns = _ns("layers.0,layers.1")
    assert train_hooks.wanted(ns) and ns.parallel == "layers"
    assert not train_hooks.wanted(_ns("layers.0")) and not train_hooks.wanted(
        _ns("layers.0", parallel="latents")
    )
    with pytest.raises(ConfigError, match="not ddp"):
        train_hooks.wanted(_ns("layers.0,layers.1", parallel="ddp"))


def test_parallel_latents_with_several_hook_points_is_refused(tmp_path):
    """--parallel latents trains one SAE: several hook points (given, or a layered run
    resumed) are refused in one line, not quietly trained in layers mode."""
    with pytest.raises(ConfigError, match="--parallel latents trains one SAE; give one --hook"):
        train_hooks.wanted(_ns("layers.0,layers.1", parallel="latents"))
    (tmp_path / "hooks.json").write_text("{}")
    with pytest.raises(ConfigError, match="--parallel latents trains one SAE"):
        train_hooks.wanted(_ns(resume=True, out=tmp_path, parallel="latents"))

"""saescope: sparse autoencoders, the microscope for neural networks.

The public API: the SAE family and its file format, the one training loop, and the errors a
user can fix. Everything else is reached through its module (`saescope.runs`,
`saescope.models`, `saescope.data`, ...). Importing saescope changes no global state.
"""

from pathlib import Path
from typing import Any

from saescope.errors import ConfigError, FormatError, InputError, SaescopeError
from saescope.interop import load
from saescope.interop import save as _save_as
from saescope.saes import (
    ARCHITECTURES,
    SAE,
    BatchTopKConfig,
    GatedConfig,
    JumpReLUConfig,
    MatryoshkaConfig,
    ReLUConfig,
    SAEConfig,
    TopKConfig,
    make_sae,
)
from saescope.training import TrainConfig, TrainResult, train
from saescope.version import __version__


def save(
    sae: SAE, path: str | Path, metadata: dict[str, Any] | None = None, format: str = "saescope"
) -> Path:
    """Save an SAE as a folder, each file atomically: saescope's own format (cfg.json +
    sae_weights.safetensors), or another that `saescope.interop.FORMATS` names ("saelens",
    ...), which the peer library's own loader reads with the same encode/decode numbers."""
    return _save_as(sae, path, format, metadata)


__all__ = [
    "ARCHITECTURES",
    "SAE",
    "BatchTopKConfig",
    "ConfigError",
    "FormatError",
    "GatedConfig",
    "InputError",
    "JumpReLUConfig",
    "MatryoshkaConfig",
    "ReLUConfig",
    "SAEConfig",
    "SaescopeError",
    "TopKConfig",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "load",
    "make_sae",
    "save",
    "train",
]

"""saescope: sparse autoencoders, the microscope for neural networks.

The public API: the SAE family and its file format, the one training loop, and the errors a
user can fix. Everything else is reached through its module (`saescope.runs`,
`saescope.models`, `saescope.data`, ...). Importing saescope changes no global state.
"""

from saescope.errors import ConfigError, FormatError, InputError, SaescopeError
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
    load,
    make_sae,
    save,
)
from saescope.training import TrainConfig, TrainResult, train
from saescope.version import __version__

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

"""saescope: sparse autoencoders, the microscope for neural networks."""

__version__ = "0.1.0"

from saescope.errors import ConfigError, FormatError, InputError, SaescopeError
from saescope.saes import ARCHITECTURES, SAE, load, make_sae, save

__all__ = [
    "ARCHITECTURES",
    "SAE",
    "ConfigError",
    "FormatError",
    "InputError",
    "SaescopeError",
    "__version__",
    "load",
    "make_sae",
    "save",
]

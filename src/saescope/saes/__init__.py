"""The SAE family: one file per architecture, and the table that names them.

Adding an architecture: one new file (a frozen config with a class-level `name` and one final
SAE class) plus one entry in ARCHITECTURES.
"""

from saescope.saes.base import SAE, LossContext, LossOutput, SAEConfig
from saescope.saes.batchtopk import BatchTopKConfig, BatchTopKSAE
from saescope.saes.gated import GatedConfig, GatedSAE
from saescope.saes.jumprelu import JumpReLUConfig, JumpReLUSAE
from saescope.saes.relu import ReLUConfig, ReLUSAE
from saescope.saes.topk import TopKConfig, TopKSAE

ARCHITECTURES: dict[str, type[SAE]] = {
    cls.config_cls.name: cls for cls in (ReLUSAE, TopKSAE, BatchTopKSAE, GatedSAE, JumpReLUSAE)
}

from saescope.saes.io import config_from_dict, load, make_sae, save  # noqa: E402

__all__ = [
    "ARCHITECTURES",
    "SAE",
    "BatchTopKConfig",
    "BatchTopKSAE",
    "GatedConfig",
    "GatedSAE",
    "JumpReLUConfig",
    "JumpReLUSAE",
    "LossContext",
    "LossOutput",
    "ReLUConfig",
    "ReLUSAE",
    "SAEConfig",
    "TopKConfig",
    "TopKSAE",
    "config_from_dict",
    "load",
    "make_sae",
    "save",
]

"""The SAE family: one file per architecture, each final class entering `ARCHITECTURES` when
its module is imported here.

Adding an architecture: one new file (a frozen config with a class-level `name` and one final
SAE class) plus its name in the import of architecture modules below.
"""

from pathlib import Path
from typing import Any

# Each module's final class enters ARCHITECTURES on import, in this order (the order of help
# texts and docs): the seed's L1 SAE, the TopK family, then the gated and threshold ones.
# isort: off
from saescope.saes import relu, topk, batchtopk, matryoshka, gated, jumprelu  # noqa: F401

# isort: on
from saescope.saes.auxk import AuxKConfig
from saescope.saes.base import (
    ARCHITECTURES,
    SAE,
    LossContext,
    LossOutput,
    SAEConfig,
    architecture,
    config_from_dict,
    make_sae,
)
from saescope.saes.batchtopk import BatchTopKConfig, BatchTopKSAE
from saescope.saes.gated import GatedConfig, GatedSAE
from saescope.saes.jumprelu import JumpReLUConfig, JumpReLUSAE
from saescope.saes.loss import Across
from saescope.saes.matryoshka import MatryoshkaConfig, MatryoshkaSAE
from saescope.saes.relu import ReLUConfig, ReLUSAE
from saescope.saes.topk import TopKConfig, TopKSAE

load = SAE.load


def save(sae: SAE, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Save an SAE as a folder (cfg.json + sae_weights.safetensors), each file atomically."""
    return sae.save(path, metadata)


__all__ = [
    "ARCHITECTURES",
    "SAE",
    "Across",
    "AuxKConfig",
    "BatchTopKConfig",
    "BatchTopKSAE",
    "GatedConfig",
    "GatedSAE",
    "JumpReLUConfig",
    "JumpReLUSAE",
    "LossContext",
    "LossOutput",
    "MatryoshkaConfig",
    "MatryoshkaSAE",
    "ReLUConfig",
    "ReLUSAE",
    "SAEConfig",
    "TopKConfig",
    "TopKSAE",
    "architecture",
    "config_from_dict",
    "load",
    "make_sae",
    "save",
]

"""The field's file formats: peer libraries' SAE folders read as saescope SAEs.

`load_saelens` reads SAELens folders (cfg.json + sae_weights.safetensors); sparsify and
dictionary_learning follow. Never unpickles: JSON and safetensors only.
"""

from saescope.interop.saelens import is_saelens, load_saelens
from saescope.interop.saelens import metadata as saelens_metadata

__all__ = ["is_saelens", "load_saelens", "saelens_metadata"]

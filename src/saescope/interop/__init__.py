"""The field's file formats: peer libraries' SAE folders read as saescope SAEs.

`load_saelens` reads SAELens folders (cfg.json + sae_weights.safetensors); `load` (with
`detect`) takes a folder in any format read here, saescope's own included, and `metadata`
says which model and hook point it belongs to where the folder records them; sparsify and
dictionary_learning follow. Never unpickles: JSON and safetensors only.
"""

from saescope.interop.detect import detect, load, metadata
from saescope.interop.saelens import is_saelens, load_saelens
from saescope.interop.saelens import metadata as saelens_metadata

__all__ = ["detect", "is_saelens", "load", "load_saelens", "metadata", "saelens_metadata"]

"""The field's file formats: peer libraries' SAE folders read as saescope SAEs.

`load_saelens` reads SAELens folders (cfg.json + sae_weights.safetensors); `load` (with
`detect`) takes a folder in any format read here, saescope's own included; sparsify and
dictionary_learning follow. Never unpickles: JSON and safetensors only.
"""

from saescope.interop.detect import detect, load
from saescope.interop.saelens import is_saelens, load_saelens
from saescope.interop.saelens import metadata as saelens_metadata

__all__ = ["detect", "is_saelens", "load", "load_saelens", "saelens_metadata"]

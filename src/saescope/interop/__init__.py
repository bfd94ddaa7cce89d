"""The field's file formats: peer libraries' SAE folders read as saescope SAEs, and saescope
SAEs written for them.

`FORMATS` (formats.py) names every format with its test, loader, writer and metadata reader;
`detect` / `load` / `metadata` take a folder in any of them, `save(sae, path, format=...)`
writes one, `convert` (convert.py) does both. Never unpickles: JSON and safetensors only.
"""

from saescope.interop.convert import convert
from saescope.interop.detect import detect, load, metadata
from saescope.interop.formats import FORMATS, Format, save
from saescope.interop.saelens import is_saelens, load_saelens, metadata_saelens
from saescope.interop.saelens import metadata as saelens_metadata
from saescope.interop.saelens_write import save_saelens

__all__ = [
    "FORMATS",
    "Format",
    "convert",
    "detect",
    "is_saelens",
    "load",
    "load_saelens",
    "metadata",
    "metadata_saelens",
    "saelens_metadata",
    "save",
    "save_saelens",
]

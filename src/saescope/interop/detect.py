"""Which format a folder is in, and loading it whatever it is.

saescope's own folders and SAELens's hold the same two file names (cfg.json +
sae_weights.safetensors); saescope's cfg.json carries `format_version`, SAELens's never does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from saescope.errors import FormatError
from saescope.interop.saelens import load_saelens
from saescope.interop.saelens import metadata as saelens_metadata
from saescope.saes import SAE, io

LOOKED_FOR = (f"saescope or SAELens ({io.CFG_FILE} + {io.WEIGHTS_FILE})",)
"""What `detect` looks for, in the order it tries (the error lists them)."""


def detect(path: str | Path) -> str:
    """The format of the SAE folder at `path`: "saescope" or "saelens"; a one-line FormatError
    listing what was looked for when it is neither."""
    path = Path(path)
    if not path.is_dir():
        raise FormatError(f"{path} is not a folder; point at a folder holding a saved SAE")
    cfg_file = path / io.CFG_FILE
    if cfg_file.is_file() and (path / io.WEIGHTS_FILE).is_file():
        try:
            cfg = json.loads(cfg_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FormatError(f"{cfg_file} is not valid JSON ({e})") from None
        return "saescope" if isinstance(cfg, dict) and "format_version" in cfg else "saelens"
    raise FormatError(
        f"{path} holds no SAE in a format saescope reads; looked for {'; '.join(LOOKED_FOR)}"
    )


def load(path: str | Path, device: str | torch.device = "cpu", hook: str | None = None) -> SAE:
    """An SAE from a folder in any format saescope reads (see `detect`), in eval mode; `hook`
    picks one hook point's SAE in a folder that holds several (a sparsify run)."""
    if detect(path) == "saescope":
        return SAE.load(path, device)
    return load_saelens(path, device)


SAESCOPE_METADATA = {
    "model": "model_name",
    "hook": "hook_name",
    "target": "hook_name_out",
    "context": "context_size",
}
"""A saescope run's recorded data (cfg.json `metadata.data`) in the peers' metadata names."""


def metadata(path: str | Path, hook: str | None = None) -> dict[str, Any]:
    """What the SAE folder at `path` says about where the SAE belongs, whatever its format:
    keys among "model_name", "hook_name", "hook_name_out" (a transcoder's target) and
    "context_size" (only those it records), plus the format's own (e.g.
    "saelens_architecture"). `hook` picks one hook point of a folder holding several."""
    if detect(path) == "saescope":
        data = (io.read_cfg(path).get("metadata") or {}).get("data") or {}
        if not isinstance(data, dict):
            return {}
        return {new: data[old] for old, new in SAESCOPE_METADATA.items() if data.get(old)}
    return saelens_metadata(path)

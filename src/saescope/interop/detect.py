"""Which format a folder is in, and loading it whatever it is: the formats of `formats.FORMATS`
tried in order (saescope's own first: its folders hold the same two file names as SAELens's,
told apart by cfg.json's `format_version`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saescope.errors import FormatError
from saescope.interop.formats import FORMATS
from saescope.saes import SAE


def looked_for() -> tuple[str, ...]:
    """What `detect` looks for, in the order it tries (the error lists them)."""
    return tuple(f.looks_for for f in FORMATS.values())


def detect(path: str | Path) -> str:
    """The format of the SAE folder at `path` (a name in FORMATS); a one-line FormatError
    listing what was looked for when it is in none."""
    path = Path(path)
    if not path.is_dir():
        raise FormatError(f"{path} is not a folder; point at a folder holding a saved SAE")
    for name, fmt in FORMATS.items():
        if fmt.is_(path):
            return name
    raise FormatError(
        f"{path} holds no SAE in a format saescope reads; looked for {'; '.join(looked_for())}"
    )


def load(path: str | Path, device: str | torch.device = "cpu", hook: str | None = None) -> SAE:
    """An SAE from a folder in any format saescope reads (see `detect`), in eval mode; `hook`
    picks one SAE where a folder holds several (a sparsify run)."""
    return FORMATS[detect(path)].load(path, device, hook)


def metadata(path: str | Path, hook: str | None = None) -> dict[str, Any]:
    """Where the SAE of a folder in any format belongs (model_name, hook_name, ...)."""
    return FORMATS[detect(path)].metadata(path, hook)

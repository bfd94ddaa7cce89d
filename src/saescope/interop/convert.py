"""Converting an SAE folder from one format to another: `convert(src, dst, to)`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saescope.errors import FormatError
from saescope.interop.detect import detect
from saescope.interop.formats import FORMATS, get_format, save
from saescope.saes import io


def convert(
    src: str | Path,
    dst: str | Path,
    to: str,
    hook: str | None = None,
    device: str | torch.device = "cpu",
) -> Path:
    """Load the SAE at `src` (any format `detect` knows; `hook` picks one where the folder
    holds several, and names the hook where the source says none) and write it at `dst` in
    format `to`, with the model and hook the source names. A one-line FormatError when `to`
    cannot express the SAE, when `dst` is `src`, or when `dst` holds an SAE in another
    format."""
    get_format(to)  # an unknown format is refused before anything is read
    src, dst = Path(src), Path(dst)
    name = detect(src)
    if dst.resolve() == src.resolve():
        raise FormatError(f"{dst} is the source folder; give --out another folder")
    sae = FORMATS[name].load(src, device, hook)
    meta = carried_metadata(src, name, to, hook)
    return save(sae, dst, to, meta)


def carried_metadata(src: Path, name: str, to: str, hook: str | None) -> dict[str, Any]:
    """What goes with the SAE: the source's model/hook metadata (a saescope folder written as
    saescope again keeps its whole metadata: the run's data, training config, outliers)."""
    meta = dict(FORMATS[name].metadata(src, hook))
    if name == "saescope" and to == "saescope":
        meta = {**(io.read_cfg(src).get("metadata") or {}), **meta}
    if hook is not None and not meta.get("hook_name"):
        meta["hook_name"] = hook
    return meta

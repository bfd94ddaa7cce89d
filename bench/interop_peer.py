"""The peer side of `make interop-check` (bench/interop_check.py), run by the peers' Python
(bench/.peers-venv), which never imports saescope: each folder saescope wrote is read by the
peer library's OWN loader, which encodes, decodes and runs forward on the fixed input.

    interop_peer.py WORK      # reads WORK/manifest.json and WORK/input.safetensors

Writes, per entry, <folder>.peer.safetensors (f, x_hat, out) and WORK/peer.json (each entry's
loader, or the one-line error the peer raised). Each peer's function here gives that peer's
own recorded outputs on the fixtures it wrote (tests/fixtures/<library>/, checked by hand).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

Outputs = tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]


def saelens(folder: Path, x: torch.Tensor, entry: dict[str, Any]) -> Outputs:
    """SAELens: SAE.load_from_disk (the registry's inference class for cfg.json's
    architecture)."""
    from sae_lens import SAE

    sae = SAE.load_from_disk(folder).eval()
    f = sae.encode(x)
    return f"SAE.load_from_disk -> {type(sae).__name__}", f, sae.decode(f), sae(x)


def sparsify(folder: Path, x: torch.Tensor, entry: dict[str, Any]) -> Outputs:
    """sparsify: SparseCoder.load_from_disk; f made dense from the top-k values and indices;
    forward's sae_out (a transcoder is given a dummy target: sae_out does not depend on it)."""
    from sparsify import SparseCoder

    if not (folder / "cfg.json").is_file():  # a run's layout: one folder per hook point
        (folder,) = [p.parent for p in folder.glob("*/sae.safetensors")]
    coder = SparseCoder.load_from_disk(folder).eval()
    acts, idx, _ = coder.encode(x)
    f = torch.zeros(x.shape[0], coder.num_latents, dtype=acts.dtype).scatter(-1, idx, acts)
    y = torch.zeros(x.shape[0], entry["d_out"]) if coder.cfg.transcode else None
    out = coder(x, y).sae_out
    return "SparseCoder.load_from_disk", f, coder.decode(acts, idx), out


def dictionary_learning(folder: Path, x: torch.Tensor, entry: dict[str, Any]) -> Outputs:
    """dictionary_learning: the library's own default loader, utils.load_dictionary (the class
    config.json's trainer.dict_class names, its from_pretrained(ae.pt), AutoEncoder's decoder
    renormalisation included)."""
    from dictionary_learning.utils import load_dictionary

    ae, cfg = load_dictionary(str(folder), device="cpu")
    ae.eval()
    f = ae.encode(x)
    loader = f"utils.load_dictionary -> {cfg['trainer']['dict_class']}.from_pretrained"
    return loader, f, ae.decode(f), ae(x)


PEERS: dict[str, Callable[[Path, torch.Tensor, dict[str, Any]], Outputs]] = {
    "saelens": saelens,
    "sparsify": sparsify,
    "dictionary_learning": dictionary_learning,
}


def main(work: Path) -> None:
    manifest = json.loads((work / "manifest.json").read_text())
    x = load_file(work / "input.safetensors")["x"]
    results = {}
    for entry in manifest:
        folder = work / entry["folder"]
        peer = PEERS.get(entry["format"])
        try:
            if peer is None:
                raise LookupError(f"no peer loader for format {entry['format']!r}")
            with torch.no_grad():
                loader, f, x_hat, out = peer(folder, x.to(torch.float32), entry)
            tensors = {"f": f, "x_hat": x_hat, "out": out}
            tensors = {k: v.detach().float().contiguous() for k, v in tensors.items()}
            save_file(tensors, str(folder) + ".peer.safetensors")
            results[entry["folder"]] = {"loader": loader}
        except Exception as e:  # any peer failure is a row of the table
            msg = (str(e).splitlines() or [""])[0][:200]
            results[entry["folder"]] = {"error": f"{type(e).__name__}: {msg}"}
    (work / "peer.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

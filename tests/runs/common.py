"""Peer libraries' SAE folders for the tests, written by hand: a SAELens folder holding a
saescope SAE's tensors (saescope's file already uses SAELens's names and shapes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from saescope.saes import SAE

SAELENS_ARCH = {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu"}


def saelens_folder(sae: SAE, out: Path, **metadata: Any) -> Path:
    """`sae` saved as SAELens 6 saves one (cfg.json + sae_weights.safetensors), its metadata
    (model_name, hook_name, hook_name_out, context_size, ...) as given; a transcoder (d_out !=
    d_in or no pre-centring) as SAELens's "transcoder"."""
    tmp = sae.save(out.parent / f"{out.name}.saescope")
    out.mkdir(parents=True)
    tensors = load_file(tmp / "sae_weights.safetensors")
    tensors.pop("log_threshold", None)  # saescope's exact copy; SAELens has `threshold` only
    save_file(tensors, out / "sae_weights.safetensors")
    shutil.rmtree(tmp)
    c = sae.cfg
    transcoder = c.d_out != c.d_in or not c.apply_b_dec_to_input
    arch = "transcoder" if transcoder and c.name == "relu" else SAELENS_ARCH[c.name]
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": c.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.54.12", **metadata},
    }
    if transcoder:
        cfg["d_out"] = c.d_out
    if c.name == "topk":
        cfg.update(k=c.k, rescale_acts_by_decoder_norm=False)
    (out / "cfg.json").write_text(json.dumps(cfg))
    return out

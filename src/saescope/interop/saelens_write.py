"""saescope SAEs written as SAELens 6 folders (cfg.json + sae_weights.safetensors), which
SAELens's own `SAE.load_from_disk` reads with saescope's encode/decode numbers.

- `relu` -> `standard`; `transcoder` when d_out != d_in or without pre-centring (`l1_mode`
  only changes training);
- `topk` -> `topk` (`rescale_acts_by_decoder_norm=False`); SAELens has no TopK transcoder;
- `jumprelu` -> `jumprelu` (`jumprelu_transcoder` when d_out != d_in), threshold =
  exp(log_threshold);
- `batchtopk`, `matryoshka` -> `jumprelu` (`jumprelu_transcoder`) at the inference threshold,
  as SAELens's runner saves them; refused before the threshold is estimated;
- `gated` -> `gated`; SAELens has no gated transcoder;
- with a skip connection (W_skip), relu -> `skip_transcoder` and the JumpReLU family ->
  `jumprelu_skip_transcoder` (no pre-centring there: one that pre-centres is refused); TopK and
  gated ones refused.

saescope's own config goes into cfg.json's `metadata.saescope` (SAELens keeps `metadata`
as it is and reads nothing there), and a JumpReLU's log-threshold, which exp does not invert
bit for bit, into the weights file's header (SAELens reads only the tensors), so
`load_saelens` gives back the same SAE bit for bit. Writes are atomic.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import torch

from saescope.atomic import atomic_save_tensors, atomic_write_bytes
from saescope.errors import FormatError
from saescope.interop.saelens import CFG_FILE, EXACT_KEY, WEIGHTS_FILE
from saescope.saes import SAE
from saescope.version import __version__

SAELENS_VERSION = "6.54.12"
"""The SAELens release whose cfg.json layout is written (>= 6: read without conversion)."""
METADATA_KEYS = (
    "model_name",
    "hook_name",
    "hook_name_out",
    "hook_head_index",
    "context_size",
    "prepend_bos",
)
"""Keys of `metadata` that go into SAELens's metadata block."""


def saelens_architecture(sae: SAE) -> str:
    """The SAELens architecture `sae` is written as; a one-line FormatError naming what
    SAELens cannot express."""
    cfg = sae.cfg
    transcoder = cfg.d_out != cfg.d_in or not cfg.apply_b_dec_to_input
    name = cfg.name
    if name in ("batchtopk", "matryoshka") and bool((sae.threshold < 0).any()):  # type: ignore[operator]
        raise FormatError(
            f"this {name} SAE has no inference threshold yet (it is estimated in training); "
            "train it (train() measures it at the end) before writing it for SAELens"
        )
    if name in ("topk", "gated") and (cfg.d_out != cfg.d_in or cfg.skip_connection):
        what = "skip connection" if cfg.skip_connection else "transcoder"
        raise FormatError(
            f"SAELens has no {name} {what} (d_in={cfg.d_in}, d_out={cfg.d_out}); "
            "SAELens transcoders are ReLU or JumpReLU: keep the saescope format"
        )
    if cfg.skip_connection and cfg.apply_b_dec_to_input:
        raise FormatError(
            f"SAELens's skip transcoders do not pre-centre (apply_b_dec_to_input) and this "
            f"{name} SAE with a skip connection does: keep the saescope format"
        )
    if name == "relu":
        return (
            "skip_transcoder"
            if cfg.skip_connection
            else ("transcoder" if transcoder else "standard")
        )
    if name in ("jumprelu", "batchtopk", "matryoshka"):
        if cfg.skip_connection:
            return "jumprelu_skip_transcoder"
        return "jumprelu_transcoder" if cfg.d_out != cfg.d_in else "jumprelu"
    if name in ("topk", "gated"):
        return name
    raise FormatError(f"SAELens has no architecture for saescope's {name!r} SAE")


def saelens_cfg(sae: SAE, arch: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """cfg.json as SAELens 6's `SAEConfig.to_dict` writes it, saescope's config in
    metadata.saescope."""
    cfg = sae.cfg
    dtype = str(sae.W_enc.dtype).removeprefix("torch.")
    meta: dict[str, Any] = {
        "sae_lens_version": SAELENS_VERSION,
        "sae_lens_training_version": SAELENS_VERSION,
        **{k: metadata[k] for k in METADATA_KEYS if metadata.get(k) is not None},
        "saescope": {"saescope_version": __version__, "config": _jsonable(cfg.to_dict())},
    }
    out: dict[str, Any] = {"d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": dtype, "device": "cpu"}
    out["apply_b_dec_to_input"] = cfg.apply_b_dec_to_input
    out["normalize_activations"] = "none"
    out["reshape_activations"] = _reshape(metadata)
    out["metadata"] = meta
    if "transcoder" in arch:
        out["d_out"] = cfg.d_out
    if arch == "topk":
        out["k"], out["rescale_acts_by_decoder_norm"] = cfg.k, False  # type: ignore[attr-defined]
    out["architecture"] = arch
    return out


def _reshape(metadata: dict[str, Any]) -> str:
    """ "hook_z" when the SAE came from a SAELens hook_z folder (its hook name ends in _z, as
    SAELens requires), else "none"."""
    if metadata.get("reshape_activations", "none") == "none":
        return "none"
    hook = metadata.get("hook_name")
    if metadata["reshape_activations"] != "hook_z" or (hook and not str(hook).endswith("_z")):
        raise FormatError(
            f"reshape_activations={metadata['reshape_activations']!r} with hook "
            f"{hook!r}: SAELens reshapes only 'hook_z' at a hook whose name ends in _z"
        )
    return "hook_z"


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def save_saelens(sae: SAE, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write `sae` as a SAELens folder at `path` (weights first, then cfg.json, each
    atomically); `metadata` (model_name, hook_name, hook_name_out, context_size, ...) goes
    into SAELens's metadata block. A one-line FormatError for what SAELens cannot express."""
    path = Path(path)
    metadata = metadata or {}
    arch = saelens_architecture(sae)
    cfg = saelens_cfg(sae, arch, metadata)
    own = sae.to_file_tensors()
    tensors = {k: v.detach().cpu() for k, v in own.items() if k != "log_threshold"}
    header = {"format": "pt"}
    if sae.cfg.name == "jumprelu":
        lt = sae.log_threshold.detach().cpu().contiguous()  # type: ignore[operator]
        header[EXACT_KEY] = base64.b64encode(lt.view(torch.uint8).numpy().tobytes()).decode()
    atomic_save_tensors(path / WEIGHTS_FILE, tensors, header)
    atomic_write_bytes(path / CFG_FILE, json.dumps(cfg, indent=2).encode())
    return path

"""SAELens folders (cfg.json + sae_weights.safetensors) as saescope SAEs.

SAELens's inference architectures map onto saescope's with the same encode/decode numbers:

| SAELens `architecture` | saescope | notes |
|---|---|---|
| `standard` | `relu` | |
| `topk` | `topk` | `rescale_acts_by_decoder_norm`: decoder norms folded into the weights |
| `jumprelu` | `jumprelu` | also what SAELens's runner writes for (Matryoshka) BatchTopK |
| `gated` | `gated` | |
| `transcoder` | `relu` | `d_out`, `apply_b_dec_to_input=False` |
| `jumprelu_transcoder` | `jumprelu` | as `transcoder` |
| `skip_transcoder` | `relu` | as `transcoder`, `skip_connection` (W_skip (d_out, d_in)) |
| `jumprelu_skip_transcoder` | `jumprelu` | as `skip_transcoder` |
| `batchtopk` (a training checkpoint) | `batchtopk` | `topk_threshold` as the threshold |

`normalize_activations` "none", "expected_average_only_in" and "covariance_whitening" leave
SAELens's own encode/decode untouched at inference (the factor or the whitening is folded into
the weights before saving), so they load as they are; "layer_norm" and "constant_norm_rescale"
normalise each token and are refused, as is every architecture saescope cannot express (abstopk,
temporal, matching pursuit, and training checkpoints). Nothing is
unpickled: JSON and safetensors only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from saescope.errors import ConfigError, FormatError
from saescope.saes import SAE, make_sae

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
ARCHITECTURES = {
    "standard": "relu",
    "topk": "topk",
    "jumprelu": "jumprelu",
    "gated": "gated",
    "transcoder": "relu",
    "jumprelu_transcoder": "jumprelu",
    "skip_transcoder": "relu",
    "jumprelu_skip_transcoder": "jumprelu",
    "batchtopk": "batchtopk",
}
"""SAELens architecture -> saescope architecture."""
REFUSED = {
    "abstopk": "top-k by absolute value, which saescope has no equivalent for",
    "temporal": "a temporal SAE (attention over context), which saescope has no equivalent for",
    "matching_pursuit": "matching-pursuit encoding, which saescope has no equivalent for",
    "matryoshka_batchtopk": "a Matryoshka BatchTopK training checkpoint, which saescope has "
    "no architecture for yet; load the folder the runner's final save wrote (a jumprelu SAE)",
}
"""SAELens architectures refused, and why."""
IDENTITY_NORMS = ("none", "expected_average_only_in", "covariance_whitening")
"""normalize_activations values under which SAELens's inference encode/decode are plain."""
TENSORS = {
    "relu": ("W_enc", "W_dec", "b_enc", "b_dec"),
    "topk": ("W_enc", "W_dec", "b_enc", "b_dec"),
    "jumprelu": ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"),
    "gated": ("W_enc", "W_dec", "b_dec", "b_gate", "b_mag", "r_mag"),
    "batchtopk": ("W_enc", "W_dec", "b_enc", "b_dec", "topk_threshold"),
}
SKIP = ("skip_transcoder", "jumprelu_skip_transcoder")
"""SAELens architectures with a skip connection: TENSORS plus W_skip (d_out, d_in)."""
RESCALE_DEFAULT = {"topk": False, "batchtopk": True}
"""SAELens's default rescale_acts_by_decoder_norm: TopKSAEConfig's and the training config's."""
METADATA_KEYS = (
    "model_name",
    "hook_name",
    "hook_name_out",
    "hook_head_index",
    "context_size",
    "prepend_bos",
)


def is_saelens(path: str | Path) -> bool:
    """Whether `path` is a folder with SAELens's two files."""
    path = Path(path)
    return (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def read_cfg(path: str | Path) -> dict[str, Any]:
    """A SAELens cfg.json, checked to be a JSON object with an architecture and sizes."""
    file = Path(path) / CFG_FILE
    if not file.is_file():
        raise FormatError(f"{file} not found: point at a folder SAELens saved (save_model)")
    try:
        cfg = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{file} is not valid JSON ({e}); re-save it with SAELens") from None
    if not isinstance(cfg, dict):
        raise FormatError(f"{file} must hold a JSON object; re-save it with SAELens")
    if _pre_6(cfg):
        cfg = _from_pre_6(cfg)
    missing = [k for k in ("d_in", "d_sae") if k not in cfg]
    if missing:
        raise FormatError(f"{file} lacks {', '.join(missing)}; re-save it with SAELens")
    return cfg


def _pre_6(cfg: dict[str, Any]) -> bool:
    """Whether cfg.json is in the layout SAELens wrote before 6.0 (as SAELens decides it)."""
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    version = cfg.get("sae_lens_version") or meta.get("sae_lens_version")
    if not isinstance(version, str):
        return True
    try:
        return int(version.split(".")[0]) < 6
    except ValueError:
        return True


PRE_6_RENAMES = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index"}


def _from_pre_6(cfg: dict[str, Any]) -> dict[str, Any]:
    """A pre-6 cfg.json read as SAELens 6 reads it: hook_point -> hook_name, no architecture
    -> standard, activation_fn_str "topk" with a k -> topk, a boolean normalize_activations ->
    "expected_average_only_in" / "none", a hook_z hook -> reshape_activations "hook_z"."""
    new = {PRE_6_RENAMES.get(k, k): v for k, v in cfg.items()}
    new.setdefault("architecture", "standard")
    new.setdefault("apply_b_dec_to_input", True)
    kwargs = new.get("activation_fn_kwargs") or {}
    act = new.get("activation_fn_str", new.get("activation_fn"))
    if act == "topk" and isinstance(kwargs, dict) and kwargs.get("k") is not None:
        new["architecture"], new["k"] = "topk", kwargs["k"]
    norm = new.get("normalize_activations")
    if isinstance(norm, bool) or norm is None:
        new["normalize_activations"] = "expected_average_only_in" if norm else "none"
    new.setdefault(
        "reshape_activations", "hook_z" if "hook_z" in str(new.get("hook_name")) else "none"
    )
    return new


def metadata(path: str | Path) -> dict[str, Any]:
    """What a SAELens folder says about where the SAE belongs: model_name, hook_name,
    hook_name_out (a transcoder's target), hook_head_index, context_size, prepend_bos (those
    present), and the SAELens architecture
    it was saved as (plus the training architecture, when the runner recorded one)."""
    cfg = read_cfg(path)
    meta = cfg.get("metadata") or {}
    if not isinstance(meta, dict):
        meta = {}
    flat = {**{k: v for k, v in cfg.items() if k in METADATA_KEYS}, **meta}
    out = {k: flat[k] for k in METADATA_KEYS if flat.get(k) is not None}
    out["saelens_architecture"] = cfg["architecture"]
    if meta.get("training_architecture"):
        out["training_architecture"] = meta["training_architecture"]
    return out


def _target(cfg: dict[str, Any], file: Path) -> str:
    arch = cfg["architecture"]
    if arch in REFUSED:
        raise FormatError(f"{file}: architecture {arch!r} is {REFUSED[arch]}")
    if arch not in ARCHITECTURES:
        known = ", ".join(ARCHITECTURES)
        raise FormatError(f"{file}: unknown SAELens architecture {arch!r}; saescope reads {known}")
    norm = cfg.get("normalize_activations", "none")
    if norm not in IDENTITY_NORMS:
        raise FormatError(
            f"{file}: normalize_activations={norm!r} normalises each token inside the SAE, "
            "which saescope has no equivalent for; fold it or re-train with 'none'"
        )
    reshape = cfg.get("reshape_activations", "none")
    if reshape != "none":
        raise FormatError(
            f"{file}: reshape_activations={reshape!r} (per-head input) is not supported yet; "
            "flatten the heads and save with reshape_activations='none'"
        )
    return ARCHITECTURES[arch]


def _config(cfg: dict[str, Any], arch: str) -> dict[str, Any]:
    d_out = cfg.get("d_out", cfg["d_in"])
    out: dict[str, Any] = {"architecture": arch, "d_in": cfg["d_in"], "d_sae": cfg["d_sae"]}
    out["d_out"] = d_out
    out["apply_b_dec_to_input"] = bool(cfg.get("apply_b_dec_to_input", True))
    if cfg["architecture"] in SKIP:
        out["skip_connection"] = True
    if arch in ("topk", "batchtopk"):
        out["k"] = cfg.get("k", 100)  # SAELens's default k
    return out


def _read_weights(path: Path) -> dict[str, Tensor]:
    file = path / WEIGHTS_FILE
    if not file.is_file():
        raise FormatError(f"{file} not found; the SAELens save is incomplete")
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FormatError(f"{file} is truncated or corrupt ({msg}); re-save it") from None


def _check_tensors(file: Path, arch: str, cfg: dict[str, Any], w: dict[str, Tensor]) -> None:
    """Names and shapes against the config: one line naming the first disagreement."""
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    d_out = cfg.get("d_out", d_in)
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_out), "b_dec": (d_out,)}
    shapes["topk_threshold"], shapes["W_skip"] = (), (d_out, d_in)
    names = TENSORS[arch] + (("W_skip",) if cfg["architecture"] in SKIP else ())
    for name in names:
        if name not in w:
            raise FormatError(f"{file}: tensor {name!r} is missing for {cfg['architecture']!r}")
        want = shapes.get(name, (d_sae,))
        if tuple(w[name].shape) != want:
            raise FormatError(
                f"{file}: tensor {name!r} has shape {tuple(w[name].shape)} but cfg.json's "
                f"d_in={d_in}, d_sae={d_sae}, d_out={d_out} give {want}; fix cfg.json or re-save"
            )
    extra = sorted(set(w) - set(names))
    if extra:
        raise FormatError(
            f"{file}: tensors {extra} have no place in a {cfg['architecture']!r} SAE "
            "saescope can express; re-save the SAE without them"
        )


def _fold_decoder_norms(w: dict[str, Tensor]) -> dict[str, Tensor]:
    """rescale_acts_by_decoder_norm: pre * ||d_i|| chooses the top k and f / ||d_i|| is decoded,
    which is the plain TopK SAE with W_enc, b_enc scaled by ||d_i|| and unit decoder rows."""
    norms = w["W_dec"].norm(dim=-1).clamp_min(1e-8)  # as SAELens: W_dec.norm(dim=-1)
    w = dict(w)
    w["W_enc"] = w["W_enc"] * norms
    w["b_enc"] = w["b_enc"] * norms
    w["W_dec"] = w["W_dec"] / norms[:, None]
    return w


def load_saelens(path: str | Path, device: str | torch.device = "cpu") -> SAE:
    """A SAELens folder as a saescope SAE in eval mode, with SAELens's encode/decode numbers;
    a one-line FormatError for what saescope cannot express."""
    path = Path(path)
    cfg = read_cfg(path)
    file = path / CFG_FILE
    arch = _target(cfg, file)
    w = _read_weights(path)
    _check_tensors(path / WEIGHTS_FILE, arch, cfg, w)
    # float64 weights stay float64; others (bf16, fp16) become float32, which holds them exactly
    dtype = torch.float64 if w["W_enc"].dtype == torch.float64 else torch.float32
    w = {k: v.to(dtype) for k, v in w.items()}
    if arch in RESCALE_DEFAULT and cfg.get("rescale_acts_by_decoder_norm", RESCALE_DEFAULT[arch]):
        w = _fold_decoder_norms(w)
    if arch == "batchtopk":  # one learnt threshold; SAELens starts it at 0 (not yet learnt)
        theta = float(w.pop("topk_threshold"))
        w["threshold"] = torch.full((cfg["d_sae"],), theta if theta > 0 else -1.0)
    if arch == "jumprelu":  # SAELens: ReLU(pre) * (pre > theta), so theta < 0 acts as 0
        w["threshold"] = w["threshold"].clamp_min(0.0)
    if arch == "relu":
        norms = w["W_dec"].norm(dim=-1)
        unit = torch.allclose(norms, torch.ones_like(norms), atol=1e-4)
        config = {**_config(cfg, arch), "l1_mode": "unit" if unit else "weighted"}
    else:
        config = _config(cfg, arch)
    try:
        sae = make_sae(config)
    except ConfigError as e:
        raise FormatError(f"{file}: {e}") from None
    sae = sae.to(dtype)
    sae.load_state_dict(sae.from_file_tensors(w))
    return sae.to(device).eval()

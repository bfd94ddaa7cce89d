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
| `matryoshka_batchtopk` (a checkpoint) | `matryoshka` | `group_sizes`: `matryoshka_widths`' steps |

`normalize_activations` "none", "expected_average_only_in" and "covariance_whitening" leave
SAELens's own encode/decode untouched at inference (the factor or the whitening is folded into
the weights before saving), so they load as they are; "layer_norm" and "constant_norm_rescale"
normalise each token and are refused, as is every architecture saescope cannot express (abstopk,
temporal, matching pursuit). `reshape_activations="hook_z"` (attention's
per-head output (..., n_heads, d_head), which SAELens flattens before encoding and unflattens
after decoding) loads as the SAE on the flattened input (..., n_heads * d_head): give `encode`
the flattened activations; `metadata_saelens` says `reshape_activations: "hook_z"`, and
`save_saelens` writes it back. BatchTopK training checkpoints keep int(k * N) codes of a batch of
N tokens, as saescope's BatchTopK does (`ops.batch_topk_count`; SAELens keeps none when
k * N < 1, saescope one). A folder saescope wrote (`saelens_write.save_saelens`) carries
saescope's own config in cfg.json's `metadata.saescope`, which SAELens ignores; loading uses it
when it agrees with the file, so the round trip gives back the same architecture and config.
Nothing is unpickled: JSON and safetensors only.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor

from saescope.errors import ConfigError, FormatError
from saescope.saes import SAE, SAEConfig, config_from_dict, make_sae
from saescope.saes.io import read_json_object

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
    "matryoshka_batchtopk": "matryoshka",
}
"""SAELens architecture -> saescope architecture."""
REFUSED = {
    "abstopk": "top-k by absolute value, which saescope has no equivalent for",
    "temporal": "a temporal SAE (attention over context), which saescope has no equivalent for",
    "matching_pursuit": "matching-pursuit encoding, which saescope has no equivalent for",
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
    "matryoshka": ("W_enc", "W_dec", "b_enc", "b_dec", "topk_threshold"),
}
SKIP = ("skip_transcoder", "jumprelu_skip_transcoder")
"""SAELens architectures with a skip connection: TENSORS plus W_skip (d_out, d_in)."""
RESCALE_DEFAULT = {"topk": False, "batchtopk": True, "matryoshka": True}
"""SAELens's default rescale_acts_by_decoder_norm: TopKSAEConfig's and the training config's."""
METADATA_KEYS = (
    "model_name",
    "hook_name",
    "hook_name_out",
    "hook_head_index",
    "context_size",
    "prepend_bos",
    "reshape_activations",
)


def is_saelens(path: str | Path) -> bool:
    """Whether `path` is a folder with SAELens's two files whose cfg.json is not saescope's
    own (which has `format_version`)."""
    path = Path(path)
    if not ((path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()):
        return False
    try:
        cfg = json.loads((path / CFG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return True  # loading it says what is wrong with it
    return not (isinstance(cfg, dict) and "format_version" in cfg)


def read_cfg(path: str | Path) -> dict[str, Any]:
    """A SAELens cfg.json, checked to be a JSON object with an architecture and sizes."""
    file = Path(path) / CFG_FILE
    if not file.is_file():
        raise FormatError(f"{file} not found: point at a folder SAELens saved (save_model)")
    cfg = read_json_object(file, "re-save the SAE")
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


def metadata_saelens(path: str | Path, hook: str | None = None) -> dict[str, Any]:
    """What a SAELens folder says about where the SAE belongs: model_name, hook_name,
    hook_name_out (a transcoder's target), hook_head_index, context_size, prepend_bos (those
    present), reshape_activations when not "none", and the SAELens architecture it was saved
    as (plus the training architecture, when the runner recorded one). `hook` is accepted for
    the common interface: a SAELens folder holds one SAE."""
    del hook
    cfg = read_cfg(path)
    meta = cfg.get("metadata") or {}
    if not isinstance(meta, dict):
        meta = {}
    flat = {**{k: v for k, v in cfg.items() if k in METADATA_KEYS}, **meta}
    out = {k: flat[k] for k in METADATA_KEYS if flat.get(k) is not None}
    if out.get("reshape_activations") == "none":
        del out["reshape_activations"]
    out["saelens_architecture"] = cfg["architecture"]
    if meta.get("training_architecture"):
        out["training_architecture"] = meta["training_architecture"]
    return out


metadata = metadata_saelens  # the name this module had first


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
    if reshape not in ("none", "hook_z"):
        raise FormatError(
            f"{file}: reshape_activations={reshape!r} is not one SAELens defines "
            "('none', 'hook_z'); fix cfg.json"
        )
    return ARCHITECTURES[arch]


def _config(cfg: dict[str, Any], arch: str) -> dict[str, Any]:
    d_out = cfg.get("d_out", cfg["d_in"])
    out: dict[str, Any] = {"architecture": arch, "d_in": cfg["d_in"], "d_sae": cfg["d_sae"]}
    out["d_out"] = d_out
    out["apply_b_dec_to_input"] = bool(cfg.get("apply_b_dec_to_input", True))
    if cfg["architecture"] in SKIP:
        out["skip_connection"] = True
    if arch in ("topk", "batchtopk", "matryoshka"):
        out["k"] = cfg.get("k", 100)  # SAELens's default k
    if arch == "matryoshka":
        out["group_sizes"] = _group_sizes(cfg)
    return out


def _group_sizes(cfg: dict[str, Any]) -> list[int]:
    """matryoshka_widths are the nested prefix sizes (SAELens appends d_sae when the last is
    smaller); saescope's group_sizes are their differences."""
    widths = list(cfg.get("matryoshka_widths") or [])
    if widths and widths[-1] != cfg["d_sae"]:
        widths.append(cfg["d_sae"])
    sizes = [b - a for a, b in zip([0, *widths], widths, strict=False)]
    if not sizes or any(not isinstance(s, int) or s < 1 for s in sizes):
        raise FormatError(
            f"matryoshka_widths {cfg.get('matryoshka_widths')!r} must be strictly increasing "
            f"positive widths up to d_sae={cfg['d_sae']}; fix cfg.json"
        )
    return sizes


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


JUMPRELU_AS = ("jumprelu", "jumprelu_transcoder", "jumprelu_skip_transcoder")
SAVED_AS = {
    "relu": ("standard", "transcoder", "skip_transcoder"),
    "topk": ("topk",),
    "batchtopk": JUMPRELU_AS,
    "matryoshka": JUMPRELU_AS,
    "jumprelu": JUMPRELU_AS,
    "gated": ("gated",),
}
"""saescope architecture -> the SAELens architectures `save_saelens` writes it as."""
EXACT_KEY = "saescope_log_threshold"
"""sae_weights.safetensors header key: a JumpReLU's log-threshold, exactly (base64 bytes)."""


def _own_config(cfg: dict[str, Any], w: dict[str, Tensor]) -> SAEConfig | None:
    """saescope's own config, when saescope wrote the folder (cfg.json metadata.saescope) and
    it still agrees with what SAELens reads (architecture, sizes, k, one threshold); else None
    (then the folder is read as SAELens reads it)."""
    meta = cfg.get("metadata")
    own = meta.get("saescope") if isinstance(meta, dict) else None
    if not isinstance(own, dict) or not isinstance(own.get("config"), dict):
        return None
    try:
        config = config_from_dict(own["config"])
    except (ConfigError, TypeError):
        return None
    same = cfg["architecture"] in SAVED_AS.get(config.name, ())
    same &= config.skip_connection == (cfg["architecture"] in SKIP)
    sizes = (config.d_in, config.d_sae, config.d_out, config.apply_b_dec_to_input)
    same &= sizes == (cfg["d_in"], cfg["d_sae"], cfg.get("d_out", cfg["d_in"]), _apply(cfg))
    if config.name == "topk":
        same &= cfg.get("k") == config.k and not cfg.get("rescale_acts_by_decoder_norm")
    if config.name in ("batchtopk", "matryoshka"):
        theta = w["threshold"]
        same &= bool((theta == theta[0]).all() and theta[0] > 0)
    return config if same else None


def _apply(cfg: dict[str, Any]) -> bool:
    return bool(cfg.get("apply_b_dec_to_input", True))


def _exact_log_threshold(path: Path, threshold: Tensor) -> Tensor | None:
    """The log-threshold saescope recorded in the weights' header, if exp of it still gives
    the file's threshold bit for bit."""
    try:
        with safe_open(str(path / WEIGHTS_FILE), framework="pt") as fh:
            text = (fh.metadata() or {}).get(EXACT_KEY)
        if text is None:
            return None
        raw = bytearray(base64.b64decode(text, validate=True))
        lt = torch.frombuffer(raw, dtype=threshold.dtype).clone()
    except (SafetensorError, OSError, ValueError, RuntimeError, binascii.Error):
        return None
    ok = lt.shape == threshold.shape and torch.equal(lt.exp(), threshold)
    return lt if ok else None


def load_saelens(
    path: str | Path, device: str | torch.device = "cpu", hook: str | None = None
) -> SAE:
    """A SAELens folder as a saescope SAE in eval mode, with SAELens's encode/decode numbers;
    a one-line FormatError for what saescope cannot express. `hook` is accepted for the common
    interface (a SAELens folder holds one SAE)."""
    del hook
    path = Path(path)
    cfg = read_cfg(path)
    file = path / CFG_FILE
    arch = _target(cfg, file)
    w = _read_weights(path)
    _check_tensors(path / WEIGHTS_FILE, arch, cfg, w)
    # float64 weights stay float64; others (bf16, fp16) become float32, which holds them exactly
    dtype = torch.float64 if w["W_enc"].dtype == torch.float64 else torch.float32
    w = {k: v.to(dtype) for k, v in w.items()}
    own = _own_config(cfg, w)
    if own is not None:
        sae = make_sae(own).to(dtype)
        state = sae.from_file_tensors(w)
        if own.name == "jumprelu":
            exact = _exact_log_threshold(path, w["threshold"])
            state["log_threshold"] = state["log_threshold"] if exact is None else exact
        sae.load_state_dict(state)
        return sae.to(device).eval()
    if arch in RESCALE_DEFAULT and cfg.get("rescale_acts_by_decoder_norm", RESCALE_DEFAULT[arch]):
        w = _fold_decoder_norms(w)
    if arch in ("batchtopk", "matryoshka"):  # one learnt threshold; SAELens starts it at 0
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

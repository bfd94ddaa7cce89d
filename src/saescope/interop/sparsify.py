"""EleutherAI sparsify folders as saescope SAEs, and saescope TopK SAEs written as them.

A SparseCoder folder (`SparseCoder.save_to_disk`) holds cfg.json (the SparseCoderConfig plus
`d_in`) and sae.safetensors: `encoder.weight` (M, d_in), `encoder.bias` (M,), `W_dec`
(M, d_in), `b_dec` (d_in,) and, with `skip_connection`, `W_skip` (d_in, d_in); M is
`num_latents`, or d_in x `expansion_factor` when it is 0. A training run's folder holds
config.json (naming its `hookpoints`) and one SparseCoder folder per hook point (`hook/seedN`
with several seeds); `hook=` picks one.

sparsify 1.3.3's math (sparse_coder.py, fused_encoder.py): encode keeps the k largest of
ReLU((x - b_dec) W^T + b) (no b_dec subtraction when `transcode`); decode is f W_dec + b_dec;
forward adds x W_skip^T. That is saescope's `topk` with W_enc = encoder.weight^T, b_enc =
encoder.bias, apply_b_dec_to_input = not transcode, d_out = d_in and skip_connection.
`normalize_decoder` (unit decoder rows kept by the trainer) and `multi_topk` (an extra
training loss at 4k) change training only; note that sparsify's `forward` of a multi_topk
coder returns the 4k reconstruction, where saescope's forward decodes the k latents encode
gives. `groupmax` is refused. Nothing is unpickled: JSON and safetensors only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor

from saescope.atomic import atomic_save_tensors, atomic_write_bytes
from saescope.errors import ConfigError, FormatError
from saescope.saes import SAE, make_sae
from saescope.saes.io import read_json_object

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
RUN_FILE = "config.json"
ACTIVATIONS = ("topk",)
REFUSED = {
    "groupmax": "the groupmax activation (the max of each of k groups), which saescope "
    "has no equivalent for"
}
METADATA_KEYS = ("model_name", "hook_name", "hook_name_out", "context_size")
METADATA_KEYS += ("reshape_activations", "hook_head_index", "prepend_bos")
SAESCOPE_KEY = "saescope"
"""sae.safetensors header key holding what save_sparsify keeps for the way back: saescope's
config and the metadata, as JSON (sparsify's loader reads tensors only)."""


def _coder(path: Path) -> bool:
    return (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def _run_config(path: Path) -> dict[str, Any] | None:
    file = path / RUN_FILE
    if not file.is_file():
        return None
    cfg = read_json_object(file, "re-save the run with sparsify")
    return cfg if isinstance(cfg.get("hookpoints"), list) else None


def is_sparsify(path: str | Path) -> bool:
    """Whether `path` is a SparseCoder folder, a sparsify training run's folder, or a folder
    of SparseCoder folders (as `SparseCoder.load_many` reads a download from the Hub)."""
    path = Path(path)
    if _coder(path):
        return True
    try:
        if _run_config(path) is not None:
            return True
    except FormatError:
        return False
    return path.is_dir() and any(d.is_dir() and _coder(d) for d in path.iterdir())


def hook_points(path: str | Path) -> list[str]:
    """The hook points of a sparsify run folder: its sub-folders (`hook` or `hook/seedN`)
    that hold a SparseCoder, in natural order."""
    path = Path(path)
    found = [d for d in path.glob("*") if d.is_dir() and _coder(d)]
    found += [d for d in path.glob("*/*") if d.is_dir() and _coder(d)]
    names = [d.relative_to(path).as_posix() for d in found]
    return sorted(names, key=_natural)


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _resolve(path: str | Path, hook: str | None) -> tuple[Path, str | None]:
    """(the SparseCoder folder, its hook point name or None) for `path` and `hook=`; a single
    SparseCoder folder is itself whatever `hook` is, as SAELens's and dictionary_learning's
    folders are."""
    path = Path(path)
    if _coder(path):  # one SAE: hook= names its hook point (a bare coder says none)
        return path, hook
    if not path.is_dir():
        raise FormatError(f"{path} is not a folder; point at a sparsify SparseCoder or run folder")
    hooks = hook_points(path)
    if not hooks:
        raise FormatError(
            f"{path} holds no sparsify SAE; looked for {CFG_FILE} + {WEIGHTS_FILE}, or "
            f"{RUN_FILE} with one such folder per hook point"
        )
    if hook is None:
        if len(hooks) > 1:
            raise FormatError(
                f"{path} is a sparsify run with {len(hooks)} hook points "
                f"({', '.join(hooks)}); pick one with hook="
            )
        hook = hooks[0]
    if hook not in hooks:
        raise FormatError(f"{path} has no hook point {hook!r}; it has {', '.join(hooks)}")
    return path / hook, hook


def coder_folder(path: str | Path, hook: str | None = None) -> Path:
    """The SparseCoder folder `hook` picks in `path` (`path` itself for a single coder)."""
    return _resolve(path, hook)[0]


def read_cfg(folder: Path) -> dict[str, Any]:
    """A SparseCoder's cfg.json with sparsify's defaults filled in and `num_latents` resolved."""
    file = folder / CFG_FILE
    cfg = read_json_object(file, "re-save it with SparseCoder.save_to_disk")
    defaults = {"activation": "topk", "expansion_factor": 32, "num_latents": 0, "k": 32}
    defaults |= {"multi_topk": False, "skip_connection": False, "transcode": False}
    defaults |= {"normalize_decoder": True}
    cfg = {**defaults, **cfg}
    for key in ("d_in", "k", "num_latents", "expansion_factor"):
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise FormatError(f"{file}: {key} must be a whole number, got {value!r}; fix cfg.json")
    cfg["num_latents"] = cfg["num_latents"] or cfg["d_in"] * cfg["expansion_factor"]
    return cfg


def metadata_sparsify(path: str | Path, hook: str | None = None) -> dict[str, Any]:
    """What the folder says: `sparsify_architecture` (the activation), `hook_name` (the hook
    point, sparsify's module path, from a run folder; a transcoder's is `M:in` with
    `hook_name_out` M, as sparsify trains it on M's input and output), `model_name` and
    `context_size` where the run's config.json has them, and what save_sparsify was given as
    metadata."""
    folder, name = _resolve(path, hook)
    cfg = read_cfg(folder)
    meta = _kept(folder).get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    out = {k: v for k, v in meta.items() if k in METADATA_KEYS and v is not None}
    name, run = _run_of(folder, name)
    if run is not None:
        if isinstance(run.get("model"), str):
            out["model_name"] = run["model"]
        if isinstance(run.get("ctx_len"), int):
            out["context_size"] = run["ctx_len"]
    if name is not None:
        point = name.split("/seed")[0]
        out["hook_name"] = point
        if cfg["transcode"] and not point.endswith(":in"):  # reads M's input, predicts M's output
            out["hook_name"], out["hook_name_out"] = f"{point}:in", point
    out["sparsify_architecture"] = cfg["activation"]
    return out


def _run_of(folder: Path, name: str | None) -> tuple[str | None, dict[str, Any] | None]:
    """(the hook point, the run's config.json) of a SparseCoder folder inside a run folder
    (`run/hook` or `run/hook/seedN`); (name, None) outside one."""
    for up, rel in ((folder.parent, folder.name), (folder.parent.parent, None)):
        try:
            run = _run_config(up)
        except FormatError:
            continue
        rel = rel or folder.relative_to(up).as_posix()
        if run is not None and rel.split("/seed")[0] in run["hookpoints"]:
            return rel, run
    return name, None


def _kept(folder: Path) -> dict[str, Any]:
    """What save_sparsify kept in the weights file's header ({} when none or unreadable)."""
    try:
        with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as f:
            kept = json.loads((f.metadata() or {}).get(SAESCOPE_KEY, "{}"))
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return {}
    return kept if isinstance(kept, dict) else {}


def _weights(folder: Path) -> dict[str, Tensor]:
    file = folder / WEIGHTS_FILE
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FormatError(f"{file} is truncated or corrupt ({msg}); re-save it") from None


def _check(folder: Path, cfg: dict[str, Any], w: dict[str, Tensor]) -> None:
    """The activation, then each tensor's name and shape against cfg.json, in one line."""
    file = folder / CFG_FILE
    act = cfg["activation"]
    if act in REFUSED:
        raise FormatError(f"{file}: activation {act!r} is {REFUSED[act]}")
    if act not in ACTIVATIONS:
        raise FormatError(
            f"{file}: unknown sparsify activation {act!r}; saescope reads {', '.join(ACTIVATIONS)}"
        )
    d, m = cfg["d_in"], cfg["num_latents"]
    want = {"encoder.weight": (m, d), "encoder.bias": (m,), "W_dec": (m, d), "b_dec": (d,)}
    if cfg["skip_connection"]:
        want["W_skip"] = (d, d)
    for name, shape in want.items():
        if name not in w:
            raise FormatError(f"{folder / WEIGHTS_FILE}: tensor {name!r} is missing; re-save it")
        if tuple(w[name].shape) != shape:
            raise FormatError(
                f"{folder / WEIGHTS_FILE}: tensor {name!r} has shape {tuple(w[name].shape)} but "
                f"cfg.json's d_in={d}, num_latents={m} give {shape}; fix cfg.json or re-save"
            )
    extra = sorted(set(w) - set(want))
    if extra:
        raise FormatError(
            f"{folder / WEIGHTS_FILE}: tensors {extra} have no place in this SparseCoder "
            "(check skip_connection in cfg.json)"
        )


def _config(cfg: dict[str, Any], kept: dict[str, Any]) -> dict[str, Any]:
    """saescope's topk config; k_aux and aux_coef from what save_sparsify kept, when it
    still agrees with cfg.json."""
    out = {"architecture": "topk", "d_in": cfg["d_in"], "d_sae": cfg["num_latents"]}
    out |= {"d_out": cfg["d_in"], "apply_b_dec_to_input": not cfg["transcode"], "k": cfg["k"]}
    out["skip_connection"] = bool(cfg["skip_connection"])
    kept = kept.get("config")
    if isinstance(kept, dict) and all(kept.get(k, False) == v for k, v in out.items()):
        out |= {k: kept[k] for k in ("k_aux", "aux_coef") if k in kept}
    return out


def load_sparsify(
    path: str | Path, device: str | torch.device = "cpu", hook: str | None = None
) -> SAE:
    """A SparseCoder (or one hook point of a run folder) as a saescope topk SAE in eval mode,
    with sparsify's encode/decode/forward numbers; a one-line FormatError for what saescope
    cannot express or a folder that disagrees with its cfg.json."""
    folder, _ = _resolve(path, hook)
    cfg = read_cfg(folder)
    w = _weights(folder)
    _check(folder, cfg, w)
    # float64 stays float64; bf16 / fp16 become float32, which holds them exactly
    dtype = torch.float64 if w["encoder.weight"].dtype == torch.float64 else torch.float32
    w = {k: v.to(dtype) for k, v in w.items()}
    try:
        sae = make_sae(_config(cfg, _kept(folder)))
    except ConfigError as e:
        raise FormatError(f"{folder / CFG_FILE}: {e}") from None
    state = {"W_enc": w["encoder.weight"].T, "b_enc": w["encoder.bias"]}
    state |= {k: w[k] for k in ("W_dec", "b_dec", "W_skip") if k in w}
    sae = sae.to(dtype)
    sae.load_state_dict(state)
    return sae.to(device).eval()


def save_sparsify(sae: SAE, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write a topk SAE as a SparseCoder folder (cfg.json + sae.safetensors, each atomically)
    that `SparseCoder.load_from_disk` reads with the same numbers; saescope's own config and
    `metadata` ride along in the weights file's header (sparsify ignores it). Another
    architecture, or a transcoder whose output width differs from its input's (sparsify's
    decoder maps back to d_in), is a one-line FormatError."""
    c = sae.cfg
    if c.name not in ACTIVATIONS:
        raise FormatError(
            f"a {c.name} SAE cannot be written for sparsify: its SparseCoder encodes by top-k "
            "only (activation 'topk'); save it in another format"
        )
    if c.d_out != c.d_in:
        raise FormatError(
            f"a transcoder with d_out={c.d_out} != d_in={c.d_in} cannot be written for "
            "sparsify: its decoder maps back to d_in; save it in another format"
        )
    path = Path(path)
    tensors = {"encoder.weight": sae.W_enc.T, "encoder.bias": sae.b_enc, "W_dec": sae.W_dec}
    tensors["b_dec"] = sae.b_dec
    if sae.W_skip is not None:
        tensors["W_skip"] = sae.W_skip
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    cfg = {
        "activation": "topk",
        "expansion_factor": c.d_sae // c.d_in or 1,
        "normalize_decoder": c.unit_norm_decoder,
        "num_latents": c.d_sae,
        "k": c.k,  # type: ignore[attr-defined]
        "multi_topk": False,
        "skip_connection": c.skip_connection,
        "transcode": not c.apply_b_dec_to_input,
        "d_in": c.d_in,
    }
    kept = json.dumps({"config": c.to_dict(), "metadata": metadata or {}})
    atomic_save_tensors(path / WEIGHTS_FILE, tensors, {"format": "pt", SAESCOPE_KEY: kept})
    atomic_write_bytes(path / CFG_FILE, json.dumps(cfg).encode())
    return path

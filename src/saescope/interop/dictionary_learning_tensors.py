"""dictionary_learning's state dicts <-> saescope's tensors and configs, class by class (the
math is in `dictionary_learning.py`'s docstring; the files in `dictionary_learning.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saescope.errors import FormatError
from saescope.saes import SAE

CLASSES = {
    "AutoEncoder": "relu",
    "AutoEncoderNew": "relu",
    "AutoEncoderTopK": "topk",
    "BatchTopKSAE": "batchtopk",
    "MatryoshkaBatchTopKSAE": "matryoshka",
    "JumpReluAutoEncoder": "jumprelu",
    "GatedAutoEncoder": "gated",
}
"""dictionary_learning dict_class -> saescope architecture."""

_TOPK = {
    "b_dec": ("b_dec", "d"),
    "k": (None, ""),
    "threshold": (None, ""),
    "decoder.weight": ("W_dec", "dm"),
    "encoder.weight": ("W_enc", "md"),
    "encoder.bias": ("b_enc", "m"),
}
LAYOUTS: dict[str, dict[str, tuple[str | None, str]]] = {
    "AutoEncoder": {
        "bias": ("b_dec", "d"),
        "encoder.weight": ("W_enc", "md"),
        "encoder.bias": ("b_enc", "m"),
        "decoder.weight": ("W_dec", "dm"),
    },
    "AutoEncoderNew": {
        "encoder.weight": ("W_enc", "md"),
        "encoder.bias": ("b_enc", "m"),
        "decoder.weight": ("W_dec", "dm"),
        "decoder.bias": ("b_dec", "d"),
    },
    "AutoEncoderTopK": _TOPK,
    "BatchTopKSAE": _TOPK,
    "MatryoshkaBatchTopKSAE": {
        "W_enc": ("W_enc", "dm"),
        "b_enc": ("b_enc", "m"),
        "W_dec": ("W_dec", "md"),
        "b_dec": ("b_dec", "d"),
        "k": (None, ""),
        "threshold": (None, ""),
        "group_sizes": (None, "g"),
    },
    "JumpReluAutoEncoder": {
        "W_enc": ("W_enc", "dm"),
        "b_enc": ("b_enc", "m"),
        "W_dec": ("W_dec", "md"),
        "b_dec": ("b_dec", "d"),
        "threshold": ("threshold", "m"),
    },
    "GatedAutoEncoder": {
        "decoder_bias": ("b_dec", "d"),
        "r_mag": ("r_mag", "m"),
        "gate_bias": ("b_gate", "m"),
        "mag_bias": ("b_mag", "m"),
        "encoder.weight": ("W_enc", "md"),
        "decoder.weight": ("W_dec", "dm"),
    },
}
"""Each class's state dict: key -> (saescope tensor or None, shape: d activation_dim,
m dict_size, "" a scalar, g the groups)."""
OPTIONAL = {
    "AutoEncoderTopK": ("k", "threshold"),
    "BatchTopKSAE": ("k",),
    "MatryoshkaBatchTopKSAE": ("k",),
}
"""Keys a save may lack (k then comes from config.json, as dictionary_learning's loaders)."""


def _transposed(name: str | None, code: str) -> bool:
    """nn.Linear stores W_enc as (m, d) and W_dec as (d, m); saescope (d, m) and (m, d)."""
    return (name, code) in (("W_enc", "md"), ("W_dec", "dm"))


# ----- reading ------------------------------------------------------------------------------


def from_dl(
    trainer: dict[str, Any], state: dict[str, Tensor], file: Path
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(saescope config, saescope file tensors) from config.json's trainer and ae.pt's state
    dict; a one-line FormatError for an unknown class, keys or shapes that do not fit."""
    cls = trainer["dict_class"]
    if cls not in CLASSES:
        raise FormatError(
            f"{file.with_name('config.json')}: unknown dict_class {cls!r}; saescope reads "
            f"{', '.join(CLASSES)}"
        )
    layout = LAYOUTS[cls]
    optional = OPTIONAL.get(cls, ())
    missing = [k for k in layout if k not in state and k not in optional]
    if missing:
        raise FormatError(f"{file}: {cls} needs tensors {missing}, missing; re-save it")
    unknown = sorted(set(state) - set(layout))
    if unknown:
        raise FormatError(
            f"{file}: tensors {unknown} have no place in a {cls} (expected {list(layout)}); "
            "re-save it without them"
        )
    d, m = _sizes(trainer, state, layout, file)
    dtype = torch.float64 if state[_weight(layout)].dtype == torch.float64 else torch.float32
    tensors = {}
    for key, (name, code) in layout.items():
        if name is not None:
            value = state[key].T if _transposed(name, code) else state[key]
            tensors[name] = value.to(dtype).contiguous()
    return _config(cls, trainer, state, tensors, d, m, file), tensors


def _weight(layout: dict[str, tuple[str | None, str]]) -> str:
    return next(k for k, (name, _) in layout.items() if name == "W_enc")


def _sizes(
    trainer: dict[str, Any],
    state: dict[str, Tensor],
    layout: dict[str, tuple[str | None, str]],
    file: Path,
) -> tuple[int, int]:
    """activation_dim and dict_size (config.json's, else the encoder's), every tensor's shape
    checked against them."""
    key = _weight(layout)
    shape = tuple(state[key].shape)
    if len(shape) != 2:
        raise FormatError(f"{file}: tensor {key!r} has shape {shape}, not a matrix; re-save it")
    d, m = shape if layout[key][1] == "dm" else shape[::-1]
    d, m = trainer.get("activation_dim", d), trainer.get("dict_size", m)
    want = {"d": (d,), "m": (m,), "dm": (d, m), "md": (m, d), "": ()}
    for key, (_, code) in layout.items():
        if key not in state:
            continue
        got = tuple(state[key].shape)
        bad = len(got) != 1 if code == "g" else got != want[code]
        if bad:
            expected = "one dimension" if code == "g" else str(want[code])
            raise FormatError(
                f"{file}: tensor {key!r} has shape {got} but config.json's activation_dim={d}, "
                f"dict_size={m} give {expected}; fix config.json or re-save"
            )
    return d, m


def _config(
    cls: str,
    trainer: dict[str, Any],
    state: dict[str, Tensor],
    tensors: dict[str, Tensor],
    d: int,
    m: int,
    file: Path,
) -> dict[str, Any]:
    arch = CLASSES[cls]
    config: dict[str, Any] = {"architecture": arch, "d_in": d, "d_sae": m}
    config["apply_b_dec_to_input"] = cls not in ("AutoEncoderNew", "JumpReluAutoEncoder")
    if arch == "relu":
        norms = tensors["W_dec"].norm(dim=1)
        unit = torch.allclose(norms, torch.ones_like(norms), atol=1e-4)
        config["l1_mode"] = "unit" if unit else "weighted"
    if arch in ("topk", "batchtopk", "matryoshka"):
        config["k"] = _k(trainer, state, file)
    if arch in ("batchtopk", "matryoshka"):  # relu(pre) * (relu(pre) > theta): theta < 0 is ReLU
        theta = float(state["threshold"])
        tensors["threshold"] = torch.full((m,), max(theta, 0.0), dtype=tensors["W_enc"].dtype)
    if arch == "matryoshka":
        config["group_sizes"] = _group_sizes(trainer, state, file)
    if arch == "jumprelu":  # relu(pre * (pre > theta)): theta < 0 acts as 0
        tensors["threshold"] = tensors["threshold"].clamp_min(0.0)
    return config


def _k(trainer: dict[str, Any], state: dict[str, Tensor], file: Path) -> int:
    given = trainer.get("k")
    if "k" in state:
        k = int(state["k"])
        if given is not None and given != k:
            raise FormatError(
                f"{file}: k={k} but config.json's trainer.k={given}; they must agree "
                "(dictionary_learning refuses it too); fix config.json"
            )
        return k
    if isinstance(given, int) and not isinstance(given, bool):
        return given
    raise FormatError(f"{file} has no k and config.json's trainer.k is {given!r}; give k")


def _group_sizes(trainer: dict[str, Any], state: dict[str, Tensor], file: Path) -> list[int]:
    sizes = [int(v) for v in state["group_sizes"].tolist()]
    given = trainer.get("group_sizes")
    if given is not None and list(given) != sizes:
        raise FormatError(
            f"{file}: group_sizes={sizes} but config.json's trainer.group_sizes={given}; "
            "they must agree; fix config.json"
        )
    return sizes


# ----- writing ------------------------------------------------------------------------------

WRITTEN = ("relu", "topk", "batchtopk", "matryoshka", "jumprelu", "gated")


def to_dl(sae: SAE) -> tuple[str, dict[str, Tensor], list[str]]:
    """(dict_class, the state dict its own loader reads with sae's numbers, the names of sae's
    state-dict entries that do not come back bitwise from it and need recording); a one-line
    FormatError for what the format cannot express."""
    c = sae.cfg
    if c.name not in WRITTEN:
        raise FormatError(
            f"dictionary_learning has no class for a {c.name!r} SAE; it writes {', '.join(WRITTEN)}"
        )
    if c.d_out != c.d_in:
        raise FormatError(
            f"a transcoder (d_in={c.d_in}, d_out={c.d_out}) cannot be written as "
            "dictionary_learning: its classes have one activation_dim"
        )
    if c.skip_connection:
        raise FormatError(
            "a skip connection (W_skip) cannot be written as dictionary_learning: its classes "
            "have none; save it in another format (sparsify, SAELens)"
        )
    t = {k: v.detach().cpu() for k, v in sae.to_file_tensors().items()}
    centred = c.apply_b_dec_to_input
    if c.name == "relu":
        norms = t["W_dec"].float().norm(dim=1)  # as AutoEncoder.normalize_decoder checks them
        if centred and torch.allclose(norms, torch.ones_like(norms)):
            return "AutoEncoder", _pack("AutoEncoder", t, {}), []
        if centred:  # AutoEncoderNew never pre-centres: fold b_dec into the encoder bias
            t["b_enc"] = _fold(t["b_enc"], t, -1.0)
        return "AutoEncoderNew", _pack("AutoEncoderNew", t, {}), ["b_enc"] if centred else []
    if c.name == "jumprelu":  # the class never pre-centres
        if centred:
            t["b_enc"] = _fold(t["b_enc"], t, -1.0)
        changed = ["b_enc", "log_threshold"] if centred else ["log_threshold"]
        return "JumpReluAutoEncoder", _pack("JumpReluAutoEncoder", t, {}), changed
    if c.name == "gated":  # the class always pre-centres
        if not centred:
            t["b_gate"] = _fold(t["b_gate"], t, 1.0)
            t["b_mag"] = _fold(t["b_mag"], t, 1.0, t["r_mag"].double().exp())
        changed = [] if centred else ["b_gate", "b_mag"]
        return "GatedAutoEncoder", _pack("GatedAutoEncoder", t, {}), changed
    if not centred:  # the TopK family always pre-centres
        t["b_enc"] = _fold(t["b_enc"], t, 1.0)
    changed = [] if centred else ["b_enc"]
    extra = {"k": torch.tensor(_whole_k(c.k, c.name), dtype=torch.int32)}
    if c.name == "topk":  # used only by encode(use_threshold=True); -1: not learnt
        extra["threshold"] = torch.tensor(-1.0)
        return "AutoEncoderTopK", _pack("AutoEncoderTopK", t, extra), changed
    extra["threshold"] = _scalar_threshold(t["threshold"], c.name)
    if c.name == "batchtopk":
        return "BatchTopKSAE", _pack("BatchTopKSAE", t, extra), changed
    extra["group_sizes"] = torch.tensor(list(c.group_sizes), dtype=torch.int64)
    return "MatryoshkaBatchTopKSAE", _pack("MatryoshkaBatchTopKSAE", t, extra), changed


def _pack(cls: str, t: dict[str, Tensor], extra: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, (name, code) in LAYOUTS[cls].items():
        value = extra[key] if name is None else t[name]
        out[key] = (value.T if _transposed(name, code) else value).contiguous().clone()
    return out


def _fold(bias: Tensor, t: dict[str, Tensor], sign: float, scale: Tensor | None = None) -> Tensor:
    """bias + sign * scale * (b_dec W_enc), in float64 then rounded once: moves the
    pre-centring (x - b_dec) W_enc into (or out of) a bias exactly in real arithmetic."""
    shift = t["b_dec"].double() @ t["W_enc"].double()
    if scale is not None:
        shift = shift * scale
    return (bias.double() + sign * shift).to(bias.dtype)


def _whole_k(k: float, name: str) -> int:
    if float(k) != int(k):
        raise FormatError(
            f"a {name} SAE with k={k} cannot be written as dictionary_learning: its classes "
            "store a whole k; use a whole k"
        )
    return int(k)


def _scalar_threshold(threshold: Tensor, name: str) -> Tensor:
    if bool((threshold < 0).any()):
        raise FormatError(
            f"this {name} SAE has no inference threshold yet (-1: it encodes by batch top-k), "
            "and dictionary_learning encodes at its threshold (-1 reads as plain ReLU); "
            "train it to the end (finish_training sets the threshold) before writing it"
        )
    if not bool((threshold == threshold[0]).all()):
        raise FormatError(
            f"this {name} SAE has per-latent thresholds; dictionary_learning keeps one scalar"
        )
    return threshold[0].clone()

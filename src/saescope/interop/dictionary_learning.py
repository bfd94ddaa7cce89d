"""dictionary_learning folders (saprmarks/dictionary_learning 0.1.0: ae.pt + config.json).

A folder holds `ae.pt`, the dictionary's state dict saved with `torch.save`, and `config.json`,
whose `trainer` names the class (`dict_class`), its sizes (`activation_dim`, `dict_size`, `k`,
`group_sizes`) and where it belongs (`lm_name`, `layer`, `submodule_name`); a training run's
output holds one such folder per trainer (`trainer_0`, ...). `ae.pt` is read with
`torch.load(weights_only=True)` only: nothing but tensors and plain containers is unpickled.

| `dict_class` | saescope | notes |
|---|---|---|
| `AutoEncoder` | `relu` | pre-centres with `bias` |
| `AutoEncoderNew` | `relu` | `apply_b_dec_to_input=False` (`decoder.bias` is b_dec) |
| `AutoEncoderTopK` | `topk` | its `threshold` serves only `encode(use_threshold=True)`; dropped |
| `BatchTopKSAE` | `batchtopk` | encodes at its scalar `threshold` (-1, not learnt: ReLU) |
| `MatryoshkaBatchTopKSAE` | `matryoshka` | `group_sizes` as saescope's; threshold as BatchTopK's |
| `JumpReluAutoEncoder` | `jumprelu` | never pre-centres: `apply_b_dec_to_input=False` |
| `GatedAutoEncoder` | `gated` | |

Loading matches the file: the numbers of the state dict as saved (`load_state_dict`).
dictionary_learning's own `AutoEncoder.from_pretrained(path)` (and `utils.load_dictionary`)
renormalises the decoder by default (`normalize_decoder=True`): when the decoder's columns are
not unit norm (SAEs trained with the April-update recipe), it divides each by its norm and
multiplies the encoder row and bias by it, so every feature activation `f_i` is scaled by
`||W_dec[i]||` while the reconstruction stays the same (to dictionary_learning's own check,
atol 1e-4). saescope does not: its `f` is the file's, as `from_pretrained(...,
normalize_decoder=False)` gives it. The other classes' loaders do not renormalise. A
`norm_factor` in config.json needs nothing: the trainer folds it into the biases before saving.

Writing (`save_dictionary_learning`) picks the class whose own loader gives saescope's numbers:
a pre-centring ReLU SAE with unit decoder rows as `AutoEncoder` (then `from_pretrained`'s
renormalisation is a no-op), any other ReLU SAE as `AutoEncoderNew` (never renormalised; a
pre-centring one with b_dec folded into the encoder bias). A pre-centring choice the class
cannot make is folded the same way (e.g. JumpReLU's `b_enc - b_dec W_enc`); such folds, and
JumpReLU's log-threshold, are not bitwise invertible, so config.json's `saescope` entry
records saescope's config and saescope.safetensors those original tensors (the peer ignores
both); loading uses them only when writing them again gives exactly the ae.pt found, so an
ae.pt changed since is read as it is.
Refused, in one line: transcoders (one `activation_dim`), other architectures, a BatchTopK or
Matryoshka SAE without an inference threshold, and a non-integer k.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from saescope.atomic import atomic_save_tensors, atomic_write_bytes
from saescope.errors import ConfigError, FormatError
from saescope.interop.dictionary_learning_tensors import from_dl, to_dl
from saescope.saes import SAE, make_sae
from saescope.saes.io import read_json_object
from saescope.version import __version__

AE_FILE = "ae.pt"
CONFIG_FILE = "config.json"
RECORD_KEY = "saescope"
"""config.json's entry for what saescope wrote (its config, the names of the tensors folds
change, and metadata)."""
KEPT_KEYS = ("reshape_activations", "hook_head_index", "prepend_bos")
"""Metadata the trainer's config has no place for, read back from saescope's record."""
STATE_FILE = "saescope.safetensors"
"""saescope's own values of the tensors a write folds (the peer never reads this file)."""


# ----- finding and reading the files --------------------------------------------------------


def is_dictionary_learning(path: str | Path) -> bool:
    """Whether `path` is a folder with ae.pt + config.json, or a run folder whose subfolders
    (trainer_0, ...) are (file names only)."""
    path = Path(path)
    if _is_dict_folder(path):
        return True
    return path.is_dir() and any(_is_dict_folder(p) for p in path.iterdir() if p.is_dir())


def _is_dict_folder(path: Path) -> bool:
    return (path / AE_FILE).is_file() and (path / CONFIG_FILE).is_file()


def resolve(path: str | Path, hook: str | None = None) -> Path:
    """The folder holding ae.pt: `path` itself (or ae.pt's folder, given the file; `hook` is
    then not needed and not checked), or, in a training run's output, the one subfolder there
    is or the one `hook` names (its path under `path`, e.g. trainer_0, or its config's
    submodule_name)."""
    path = Path(path)
    if path.name == AE_FILE and path.is_file():
        path = path.parent
    if (path / AE_FILE).is_file():
        return path
    if not path.is_dir():
        raise FormatError(f"{path} is not a folder; point at a dictionary_learning save folder")
    found = sorted(p.parent for p in path.rglob(AE_FILE) if (p.parent / CONFIG_FILE).is_file())
    if not found:
        raise FormatError(
            f"{path} holds no {AE_FILE} + {CONFIG_FILE}; point at a folder dictionary_learning's "
            "training wrote (save_dir/trainer_N)"
        )
    names = [p.relative_to(path).as_posix() for p in found]
    if hook is None and len(found) == 1:
        return found[0]
    if hook is not None:
        hits = [p for p, n in zip(found, names, strict=True) if hook in (n, _submodule(p))]
        if len(hits) == 1:
            return hits[0]
    which = "several" if hook is None else f"{len(hits)} matching hook={hook!r} among"
    raise FormatError(
        f"{path} holds {which} dictionaries ({', '.join(names)}); pick one with hook= one "
        "of those folders (or a submodule_name naming only one)"
    )


def _submodule(folder: Path) -> str | None:
    try:
        return read_config(folder)["trainer"].get("submodule_name")
    except FormatError:
        return None


def read_config(path: str | Path) -> dict[str, Any]:
    """config.json, checked to be an object whose `trainer` is an object with a dict_class."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise FormatError(f"{file} not found; the dictionary_learning save is incomplete")
    cfg = read_json_object(file, "re-save it")
    trainer = cfg.get("trainer")
    if not isinstance(trainer, dict) or not isinstance(trainer.get("dict_class"), str):
        raise FormatError(
            f"{file} lacks trainer.dict_class; dictionary_learning's training writes "
            '{"trainer": {"dict_class": ..., ...}}'
        )
    return cfg


def read_state(file: Path) -> dict[str, Tensor]:
    """ae.pt with torch.load(weights_only=True): a dict of tensors, or a one-line FormatError."""
    if not file.is_file():
        raise FormatError(f"{file} not found; the dictionary_learning save is incomplete")
    try:
        state = torch.load(file, weights_only=True, map_location="cpu")
    except Exception as e:  # torch raises many kinds for a bad file
        raise FormatError(_load_error(file, e)) from None
    if not isinstance(state, dict):
        raise FormatError(
            f"{file} holds a {type(state).__name__}, not a state dict; save "
            "ae.state_dict() with torch.save"
        )
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise FormatError(
                f"{file}: entry {key!r} is a {type(value).__name__}, not a tensor; save "
                "ae.state_dict() with torch.save"
            )
    return state


def _load_error(file: Path, e: Exception) -> str:
    msg = str(e)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", msg)
    if found:
        return (
            f"{file} needs unpickling {found.group(1)} (not only tensors), which saescope never "
            "does; re-save it as a plain state dict: torch.save(ae.state_dict(), path)"
        )
    detail = msg.split("WeightsUnpickler error:")[-1].strip().splitlines()
    first = detail[0] if detail else type(e).__name__
    return f"{file} is not a readable torch state dict ({first}); re-save it with torch.save"


# ----- loading ------------------------------------------------------------------------------


def metadata_dictionary_learning(path: str | Path, hook: str | None = None) -> dict[str, Any]:
    """What the folder's config.json says: model_name (lm_name), hook_name (submodule_name),
    layer, context_size (buffer.ctx_len), dictionary_learning_architecture (dict_class), and
    KEPT_KEYS from saescope's record; only those present."""
    cfg = read_config(resolve(path, hook))
    trainer, buffer = cfg["trainer"], cfg.get("buffer")
    found = {
        "model_name": trainer.get("lm_name"),
        "hook_name": trainer.get("submodule_name"),
        "layer": trainer.get("layer"),
        "context_size": buffer.get("ctx_len") if isinstance(buffer, dict) else None,
    }
    out = {k: v for k, v in found.items() if v is not None}
    record = cfg.get(RECORD_KEY)
    kept = record.get("metadata") if isinstance(record, dict) else None
    for key in KEPT_KEYS:  # what saescope wrote beside the trainer's keys
        if isinstance(kept, dict) and kept.get(key) is not None:
            out.setdefault(key, kept[key])
    out["dictionary_learning_architecture"] = trainer["dict_class"]
    return out


def load_dictionary_learning(
    path: str | Path, device: str | torch.device = "cpu", hook: str | None = None
) -> SAE:
    """A dictionary_learning folder as a saescope SAE in eval mode, with the numbers of the
    state dict as saved; a one-line FormatError for what saescope cannot express."""
    folder = resolve(path, hook)
    cfg = read_config(folder)
    file = folder / AE_FILE
    state = read_state(file)
    config, tensors = from_dl(cfg["trainer"], state, file)
    sae = _build(config, tensors, folder / CONFIG_FILE)
    recorded = _recorded(cfg.get(RECORD_KEY), sae, state, folder)
    return (recorded or sae).to(device).eval()


def _build(config: dict[str, Any], tensors: dict[str, Tensor], file: Path) -> SAE:
    try:
        sae = make_sae(config)
    except ConfigError as e:
        raise FormatError(f"{file}: {e}") from None
    sae = sae.to(tensors["W_enc"].dtype)
    sae.load_state_dict(sae.from_file_tensors(tensors))
    return sae


def _recorded(record: Any, sae: SAE, state: dict[str, Tensor], folder: Path) -> SAE | None:
    """The SAE saescope wrote, from config.json's record: only when writing it again gives
    exactly this ae.pt (else None: the file as it is wins)."""
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        return None
    try:
        cand = make_sae(record["config"]).to(sae.W_enc.dtype)
        own = dict(sae.state_dict())
        names = record.get("state") or []
        if names:
            kept = load_file(folder / STATE_FILE)
            own.update({name: kept[name] for name in names})
        cand.load_state_dict(own)
        again = to_dl(cand)[1]
    except (ConfigError, FormatError, KeyError, TypeError, ValueError, RuntimeError, OSError):
        return None
    same = again.keys() == state.keys() and all(
        again[k].dtype == state[k].dtype and torch.equal(again[k], state[k]) for k in state
    )
    return cand if same else None


# ----- writing ------------------------------------------------------------------------------


def save_dictionary_learning(
    sae: SAE, path: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write `sae` as a dictionary_learning folder (ae.pt, then config.json, each atomically)
    that dictionary_learning's own loaders read with saescope's encode/decode numbers.
    metadata's model_name, hook_name, layer and context_size go where the trainer puts them."""
    path = Path(path)
    dict_class, state, changed = to_dl(sae)
    meta = dict(metadata or {})
    trainer: dict[str, Any] = {
        "dict_class": dict_class,
        "activation_dim": sae.cfg.d_in,
        "dict_size": sae.cfg.d_sae,
    }
    if "k" in state:
        trainer["k"] = int(state["k"])
    if "group_sizes" in state:
        trainer["group_sizes"] = state["group_sizes"].tolist()
    trainer["lm_name"] = meta.get("model_name")
    trainer["layer"] = meta.get("layer")
    trainer["submodule_name"] = meta.get("hook_name")
    config: dict[str, Any] = {"trainer": trainer}
    if meta.get("context_size") is not None:
        config["buffer"] = {"ctx_len": meta["context_size"]}
    own = sae.state_dict()
    config[RECORD_KEY] = {
        "saescope_version": __version__,
        "config": sae.cfg.to_dict(),
        "state": list(changed),
        "metadata": meta,
    }
    if changed:  # exact tensors beside the peer's files (JSON has no -inf, and is bulky)
        atomic_save_tensors(
            path / STATE_FILE, {n: own[n].detach().cpu() for n in changed}, {"format": "pt"}
        )
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path / AE_FILE, buf.getvalue())
    atomic_write_bytes(path / CONFIG_FILE, json.dumps(config, indent=4, default=str).encode())
    return path

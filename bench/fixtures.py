"""Fixtures written by the peer libraries themselves, for saescope's interop tests.

    make fixtures                   # or: .venv/bin/python bench/fixtures.py [--only saelens]

Run with saescope's Python, it builds the peers' venv (bench/.peers-venv, as `make bench`
does) and runs itself again with the peers' Python, which never imports saescope. Each
fixture is a tiny SAE (d_in 16, d_sae 32) with random, non-trivial parameters (non-zero biases
and thresholds, decoder rows not of unit norm where the library allows), saved by the
library's OWN save function into tests/fixtures/<library>/<name>/, next to:

- expected.safetensors: the fixed input `x` (8, d_in), and the library's own `f` = encode(x),
  `x_hat` = decode(f) and `out` = forward(x) (float32, on the CPU);
- fixture.json: library, version, the class and save function used, the config flags that
  change the math, and whether saescope is expected to load it ("expressible": false marks a
  file saescope must refuse with a one-line error, and says why).

Fixtures are deterministic (fixed seeds); rerunning overwrites them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "tests" / "fixtures"
D_IN, D_SAE, N, K = 16, 32, 8, 4
HOOK = {"model_name": "glassllm", "hook_name": "blocks.1.hook_resid_post"}
HOOK_OUT = "blocks.1.hook_mlp_out"


def _peers_python() -> Path:
    sys.path.insert(0, str(HERE))
    from train_step import ensure_peers  # bench/train_step.py builds the peers' venv

    py = ensure_peers(HERE / ".peers-venv")
    if py is None:
        sys.exit("could not build the peers' venv (bench/.peers-venv); see the pip error above")
    return py


# ----- shared helpers (peers' venv) -----------------------------------------------------------


def _gen(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)


def _input(seed: int = 0):
    import torch

    x = torch.randn(N, D_IN, generator=_gen(1000 + seed)) * 1.5 + 0.3
    return x.float()


def _randomise(module, seed: int, positive: tuple[str, ...] = ()) -> None:
    """Every parameter/buffer random: matrices ~ N(0, 1/fan_in), vectors ~ N(0, 0.3), those in
    `positive` uniform in (0.2, 0.8); decoder rows get norms spread over (0.5, 2)."""
    import torch

    g = _gen(seed)
    with torch.no_grad():
        for name, p in [*module.named_parameters(), *module.named_buffers()]:
            if not p.is_floating_point() or p.dim() == 0:
                continue
            if name in positive:
                p.copy_(torch.rand(p.shape, generator=g) * 0.6 + 0.2)
            elif p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[0] ** 0.5)
        w_dec = getattr(module, "W_dec", None)
        if w_dec is not None and w_dec.dim() == 2:
            rows = w_dec.shape[0]
            scale = torch.rand(rows, generator=g) * 1.5 + 0.5
            w_dec.mul_(scale[:, None] / w_dec.norm(dim=1, keepdim=True))


def _write(folder: Path, outputs: dict[str, Any], info: dict[str, Any]) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in outputs.items()}
    save_file(tensors, str(folder / "expected.safetensors"))
    (folder / "fixture.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in tensors.items())
    print(f"  {folder.relative_to(OUT)}: {shapes}")


# ----- SAELens ----------------------------------------------------------------------------------


def _saelens_meta(arch: str):
    """Where the SAE belongs; a transcoder also names the hook it writes (hook_name_out)."""
    from sae_lens.saes.sae import SAEMetadata

    out = {"hook_name_out": HOOK_OUT} if "transcoder" in arch else {}
    return SAEMetadata(**HOOK, **out, context_size=64, prepend_bos=True)


def _saelens_inference(arch: str, flags: dict[str, Any], seed: int):
    """An inference SAE of SAELens's registry, random parameters."""
    from sae_lens.registry import get_sae_class

    sae_cls, cfg_cls = get_sae_class(arch)
    cfg = cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=_saelens_meta(arch), **flags)
    sae = sae_cls(cfg)
    _randomise(sae, seed, positive=("threshold",))
    return sae.eval()


def _saelens_training(arch: str, flags: dict[str, Any], seed: int):
    """A training SAE of SAELens's registry, random parameters; the threshold BatchTopK keeps
    (a buffer) set by hand."""
    import torch
    from sae_lens.registry import get_sae_training_class

    sae_cls, cfg_cls = get_sae_training_class(arch)
    cfg = cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=_saelens_meta(arch), **flags)
    sae = sae_cls(cfg)
    _randomise(sae, seed, positive=("threshold",))
    if hasattr(sae, "topk_threshold"):
        sae.topk_threshold = torch.tensor(0.37, dtype=torch.double)
    return sae.eval()


def _record_saelens(folder: Path, x, loader: Callable[[Path], Any]) -> dict[str, Any]:
    """encode / decode / forward of the SAE as saved and loaded back by SAELens itself."""
    import torch

    loaded = loader(folder).eval()
    with torch.no_grad():
        f = loaded.encode(x)
        x_hat = loaded.decode(f)
        out = loaded(x)
    return {"x": x, "f": f, "x_hat": x_hat, "out": out}


SAELENS: list[tuple[str, str, str, dict[str, Any], str | None]] = [
    # name, registry, architecture, config flags, refusal reason. registry: "inference" (an
    # inference SAE, save_model), "training" (the training runner's final save of a training
    # SAE, save_inference_model) or "checkpoint" (a training SAE, save_model)
    ("standard", "inference", "standard", {}, None),
    ("standard_no_b_dec_in", "inference", "standard", {"apply_b_dec_to_input": False}, None),
    ("topk", "inference", "topk", {"k": K}, None),
    (
        "topk_rescale",
        "inference",
        "topk",
        {"k": K, "rescale_acts_by_decoder_norm": True},
        None,
    ),
    ("jumprelu", "inference", "jumprelu", {}, None),
    ("gated", "inference", "gated", {}, None),
    ("batchtopk", "training", "batchtopk", {"k": K}, None),
    (
        "matryoshka_batchtopk",
        "training",
        "matryoshka_batchtopk",
        {"k": K, "matryoshka_widths": [8, 16, D_SAE]},
        None,
    ),
    ("transcoder", "inference", "transcoder", {"d_out": 12, "apply_b_dec_to_input": False}, None),
    (
        "jumprelu_transcoder",
        "inference",
        "jumprelu_transcoder",
        {"d_out": 12, "apply_b_dec_to_input": False},
        None,
    ),
    (
        "skip_transcoder",
        "inference",
        "skip_transcoder",
        {"d_out": 12, "apply_b_dec_to_input": False},
        "a skip connection W_skip (saescope has none)",
    ),
    ("abstopk", "inference", "abstopk", {"k": K}, "top-k by absolute value (abstopk)"),
    (
        "standard_layer_norm",
        "inference",
        "standard",
        {"normalize_activations": "layer_norm"},
        "normalize_activations='layer_norm' (a per-token normalisation saescope lacks)",
    ),
    (
        "standard_constant_norm_rescale",
        "inference",
        "standard",
        {"normalize_activations": "constant_norm_rescale"},
        "normalize_activations='constant_norm_rescale' (a per-token rescale saescope lacks)",
    ),
    # training checkpoints (the trainer's periodic TrainingSAE.save_model): training classes
    ("ckpt_batchtopk", "checkpoint", "batchtopk", {"k": K}, None),
    ("ckpt_topk", "checkpoint", "topk", {"k": K}, None),
    ("ckpt_jumprelu", "checkpoint", "jumprelu", {}, None),
    (
        "ckpt_matryoshka_batchtopk",
        "checkpoint",
        "matryoshka_batchtopk",
        {"k": K, "matryoshka_widths": [8, 16, D_SAE]},
        "a Matryoshka BatchTopK training checkpoint (no Matryoshka architecture in saescope yet)",
    ),
    # cfg.json in the layout SAELens < 6 wrote (read by SAELens 6's own loader)
    ("pre6_standard", "pre6", "standard", {}, None),
    ("pre6_topk", "pre6", "topk", {"k": K}, None),
]


def _pre6_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """A SAELens 6 cfg.json in the layout SAELens 5 wrote: no architecture or metadata keys,
    hook_point for hook_name, the activation as activation_fn_str (+ kwargs), a boolean
    normalize_activations, the version at the top level."""
    meta = cfg["metadata"]
    old = {k: cfg[k] for k in ("d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input")}
    old |= {"model_name": meta["model_name"], "hook_point": meta["hook_name"]}
    old |= {"hook_point_layer": 1, "hook_point_head_index": None, "context_size": 64}
    old |= {"prepend_bos": True, "normalize_activations": False, "sae_lens_version": "5.9.1"}
    old |= {"finetuning_scaling_factor": False, "activation_fn_kwargs": {}}
    old["activation_fn_str"] = cfg["architecture"] if cfg["architecture"] == "topk" else "relu"
    if "k" in cfg:
        old["activation_fn_kwargs"] = {"k": cfg["k"]}
    return old


def _save_saelens(registry: str, arch: str, flags: dict[str, Any], seed: int, folder: Path):
    """Build and save one SAELens SAE; its loader (SAELens's own) and how it was saved."""
    from sae_lens import SAE, TrainingSAE

    if registry == "pre6":
        sae = _saelens_inference(arch, flags, seed)
        sae.save_model(folder)
        cfg = _pre6_cfg(json.loads((folder / "cfg.json").read_text()))
        (folder / "cfg.json").write_text(json.dumps(cfg))
        how = f"{type(sae).__name__}.save_model, cfg.json rewritten as SAELens 5 wrote it"
        return SAE.load_from_disk, how, "SAE.load_from_disk"
    if registry == "inference":
        sae = _saelens_inference(arch, flags, seed)
        sae.save_model(folder)
        return SAE.load_from_disk, f"{type(sae).__name__}.save_model", "SAE.load_from_disk"
    sae = _saelens_training(arch, flags, seed)
    if registry == "training":  # the runner's final save: the inference model
        sae.save_inference_model(folder)
        how = f"{type(sae).__name__}.save_inference_model"
        return SAE.load_from_disk, how, "SAE.load_from_disk"
    sae.save_model(folder)
    how = f"{type(sae).__name__}.save_model"
    return TrainingSAE.load_from_disk, how, "TrainingSAE.load_from_disk"


def _saelens_inference_outputs(folder: Path, x) -> dict[str, Any]:
    """A checkpoint's inference behaviour as SAELens defines it: save_inference_model of the
    loaded checkpoint, loaded back, encoded (BatchTopK: JumpReLU at the learnt threshold)."""
    import tempfile

    import torch
    from sae_lens import SAE, TrainingSAE

    with tempfile.TemporaryDirectory() as tmp:
        TrainingSAE.load_from_disk(folder).save_inference_model(tmp)
        inference = SAE.load_from_disk(tmp).eval()
        with torch.no_grad():
            f = inference.encode(x)
            return {"f_inference": f, "out_inference": inference(x)}


def _saved_arch(folder: Path) -> str:
    return json.loads((folder / "cfg.json").read_text())["architecture"]


def saelens(out: Path) -> None:
    import sae_lens

    print(f"SAELens {sae_lens.__version__}")
    for seed, (name, registry, arch, flags, refusal) in enumerate(SAELENS):
        folder = out / "saelens" / name
        folder.mkdir(parents=True, exist_ok=True)
        x = _input(seed)
        loader, saved_with, loaded_with = _save_saelens(registry, arch, flags, seed, folder)
        outputs = _record_saelens(folder, x, loader)
        if registry == "checkpoint":
            outputs |= _saelens_inference_outputs(folder, x)
        _write(
            folder,
            outputs,
            {
                "library": "sae_lens",
                "version": version("sae-lens"),
                "saved_with": saved_with,
                "loaded_with": loaded_with,
                "architecture": arch if registry == "pre6" else _saved_arch(folder),
                "flags": flags,
                "hook": {**HOOK, **({"hook_name_out": HOOK_OUT} if "transcoder" in arch else {})},
                "expressible": refusal is None,
                "refusal": refusal,
            },
        )


# ----- sparsify ---------------------------------------------------------------------------------

SPARSIFY: list[tuple[str, dict[str, Any], str | None]] = [
    # name, SparseCoderConfig flags, refusal reason
    ("topk", {}, None),
    ("transcoder", {"transcode": True}, None),
    ("skip", {"skip_connection": True}, "a skip connection W_skip (saescope has none)"),
    ("groupmax", {"activation": "groupmax"}, "the groupmax activation (saescope has none)"),
]
SPARSIFY_RUN_HOOKS = ("layers.0", "layers.1")
"""A training run's output folder: one SparseCoder folder per hook point, and config.json."""


def _sparsify_coder(flags: dict[str, Any], seed: int):
    from sparsify import SparseCoder, SparseCoderConfig

    cfg = SparseCoderConfig(num_latents=D_SAE, k=K, normalize_decoder=False, **flags)
    coder = SparseCoder(D_IN, cfg)
    _randomise(coder, seed)
    return coder


def _record_sparsify(folder: Path, x) -> dict[str, Any]:
    """encode (dense f from the top-k values and indices), decode and forward of the coder as
    loaded back by SparseCoder.load_from_disk."""
    import torch
    from sparsify import SparseCoder

    coder = SparseCoder.load_from_disk(folder)
    with torch.no_grad():
        acts, idx, _ = coder.encode(x)
        f = torch.zeros(x.shape[0], coder.num_latents).scatter(-1, idx, acts)
        x_hat = coder.decode(acts, idx)
        out = coder(x).sae_out
    return {"x": x, "f": f, "x_hat": x_hat, "out": out}


def _sparsify_info(flags: dict[str, Any], refusal: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "library": "sparsify",
        "version": version("eai-sparsify"),
        "saved_with": "SparseCoder.save_to_disk",
        "loaded_with": "SparseCoder.load_from_disk",
        "flags": flags,
        "expressible": refusal is None,
        "refusal": refusal,
        **extra,
    }


def sparsify(out: Path) -> None:
    from sparsify import SparseCoderConfig
    from sparsify.config import TrainConfig

    print(f"sparsify {version('eai-sparsify')}")
    for seed, (name, flags, refusal) in enumerate(SPARSIFY):
        folder = out / "sparsify" / name
        _sparsify_coder(flags, 100 + seed).save_to_disk(folder)
        _write(folder, _record_sparsify(folder, _input(seed)), _sparsify_info(flags, refusal))
    # A run's output: one folder per hook point plus the run's config.json (as Trainer.save).
    run = out / "sparsify" / "run"
    cfg = SparseCoderConfig(num_latents=D_SAE, k=K, normalize_decoder=False)
    run.mkdir(parents=True, exist_ok=True)
    TrainConfig(sae=cfg, hookpoints=list(SPARSIFY_RUN_HOOKS)).save_json(run / "config.json")
    for i, hook in enumerate(SPARSIFY_RUN_HOOKS):
        folder = run / hook
        _sparsify_coder({}, 200 + i).save_to_disk(folder)
        info = _sparsify_info({}, None, hook=hook, run="config.json one level up")
        _write(folder, _record_sparsify(folder, _input(20 + i)), info)


# ----- dictionary_learning ---------------------------------------------------------------------


def _dictlearn_trainer(kind: str):
    """A dictionary_learning trainer (for its `ae` and its `config`, which training.py writes to
    config.json); nothing is trained."""
    from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer
    from dictionary_learning.trainers.gdm import GatedSAETrainer
    from dictionary_learning.trainers.jumprelu import JumpReluTrainer
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer
    from dictionary_learning.trainers.standard import StandardTrainer
    from dictionary_learning.trainers.top_k import TopKTrainer

    common = {"steps": 100_000, "activation_dim": D_IN, "dict_size": D_SAE, "layer": 1}
    common |= {"lm_name": HOOK["model_name"], "submodule_name": "resid_post_layer_1"}
    topk = {"k": K, "device": "cpu"}
    make = {
        "AutoEncoder": lambda: StandardTrainer(**common, device="cpu"),
        "AutoEncoderTopK": lambda: TopKTrainer(**common, **topk),
        "BatchTopKSAE": lambda: BatchTopKTrainer(**common, **topk),
        "JumpReluAutoEncoder": lambda: JumpReluTrainer(**common),
        "GatedAutoEncoder": lambda: GatedSAETrainer(**common, device="cpu"),
        "MatryoshkaBatchTopKSAE": lambda: MatryoshkaBatchTopKTrainer(
            **common, **topk, group_fractions=[0.25, 0.25, 0.5]
        ),
    }
    return make[kind]()


DICTLEARN: list[tuple[str, str | None]] = [
    # the dictionary class, refusal reason
    ("AutoEncoder", None),
    ("AutoEncoderTopK", None),
    ("BatchTopKSAE", None),
    ("JumpReluAutoEncoder", None),
    ("GatedAutoEncoder", None),
    ("MatryoshkaBatchTopKSAE", None),
]


def dictionary_learning(out: Path) -> None:
    import torch

    print(f"dictionary_learning {version('dictionary-learning')}")
    for seed, (kind, refusal) in enumerate(DICTLEARN):
        folder = out / "dictionary_learning" / kind
        folder.mkdir(parents=True, exist_ok=True)
        trainer = _dictlearn_trainer(kind)
        ae = trainer.ae
        _randomise(ae, 300 + seed, positive=("threshold",))
        if hasattr(ae, "threshold") and ae.threshold.dim() == 0:  # BatchTopK's scalar
            ae.threshold.fill_(0.31)
        # training.py's final save: the state dict with torch.save, config.json beside it
        torch.save({k: v.cpu() for k, v in ae.state_dict().items()}, folder / "ae.pt")
        config = {"trainer": trainer.config}
        (folder / "config.json").write_text(json.dumps(config, indent=4, default=str))
        # the numbers the file holds: loaded back without from_pretrained's renormalisation
        ae.load_state_dict(torch.load(folder / "ae.pt", weights_only=True))
        x = _input(seed)
        with torch.no_grad():
            f = ae.encode(x)
            outputs = {"x": x, "f": f, "x_hat": ae.decode(f), "out": ae(x)}
        _write(
            folder,
            outputs,
            {
                "library": "dictionary_learning",
                "version": version("dictionary-learning"),
                "saved_with": "torch.save(ae.state_dict()) + config.json, as training.py",
                "loaded_with": "load_state_dict(torch.load(ae.pt, weights_only=True))",
                "dict_class": kind,
                "expressible": refusal is None,
                "refusal": refusal,
            },
        )


# ----- driver -----------------------------------------------------------------------------------

LIBRARIES: dict[str, Callable[[Path], None]] = {
    "saelens": saelens,
    "sparsify": sparsify,
    "dictionary_learning": dictionary_learning,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=sorted(LIBRARIES), action="append")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    peers = torch is not None and _has("sae_lens")
    if not peers or os.environ.get("PYTHONHASHSEED") != "0":
        # rerun under the peers' venv (from saescope's Python) with a fixed hash seed: SAELens
        # writes some cfg.json keys in set order, so the files come out the same every run
        py = Path(sys.executable) if peers else _peers_python()
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        os.execve(str(py), [str(py), __file__, *sys.argv[1:]], env)
    torch.manual_seed(0)
    for lib in a.only or LIBRARIES:
        LIBRARIES[lib](a.out)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    main()

"""SAELens fixtures (bench/fixtures.py): every architecture SAELens saves, its inference
SAEs (save_model), the training runner's final save (save_inference_model), training
checkpoints (TrainingSAE.save_model) and the cfg.json layout of SAELens < 6."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from fixtures_common import D_IN, D_SAE, HOOK, HOOK_OUT, K, fixed_input, randomise, write

HOOK_Z = {**HOOK, "hook_name": "blocks.1.attn.hook_z"}
"""A hook_z SAE's hook (SAELens reshapes only at hooks whose name ends in _z)."""
N_HEADS = 4
"""hook_z: d_in = N_HEADS heads x D_IN // N_HEADS dimensions."""


def _hook(arch: str, flags: dict[str, Any]) -> dict[str, str]:
    """Where the SAE belongs; a transcoder also names the hook it writes (hook_name_out)."""
    hook = HOOK_Z if flags.get("reshape_activations") == "hook_z" else HOOK
    return {**hook, **({"hook_name_out": HOOK_OUT} if "transcoder" in arch else {})}


def _saelens_meta(arch: str, flags: dict[str, Any]):
    from sae_lens.saes.sae import SAEMetadata

    return SAEMetadata(**_hook(arch, flags), context_size=64, prepend_bos=True)


def _saelens_inference(arch: str, flags: dict[str, Any], seed: int):
    """An inference SAE of SAELens's registry, random parameters."""
    from sae_lens.registry import get_sae_class

    sae_cls, cfg_cls = get_sae_class(arch)
    cfg = cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=_saelens_meta(arch, flags), **flags)
    sae = sae_cls(cfg)
    randomise(sae, seed, positive=("threshold",))
    return sae.eval()


def _saelens_training(arch: str, flags: dict[str, Any], seed: int):
    """A training SAE of SAELens's registry, random parameters; the threshold BatchTopK keeps
    (a buffer) set by hand."""
    import torch
    from sae_lens.registry import get_sae_training_class

    sae_cls, cfg_cls = get_sae_training_class(arch)
    cfg = cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=_saelens_meta(arch, flags), **flags)
    sae = sae_cls(cfg)
    randomise(sae, seed, positive=("threshold",))
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
        None,
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
        None,
    ),
    # cfg.json in the layout SAELens < 6 wrote (read by SAELens 6's own loader)
    ("pre6_standard", "pre6", "standard", {}, None),
    ("pre6_topk", "pre6", "topk", {"k": K}, None),
    # normalisations SAELens's own inference encode/decode leave untouched (folded at save)
    (
        "standard_expected_average",
        "inference",
        "standard",
        {"normalize_activations": "expected_average_only_in"},
        None,
    ),
    (
        "standard_covariance_whitening",
        "inference",
        "standard",
        {"normalize_activations": "covariance_whitening"},
        None,
    ),
    # added later, at the end so the seeds (list positions) of the others stay
    # k * N fractional (2.7 * 8 = 21.6): SAELens keeps int(k * N) = 21 codes of the batch
    ("ckpt_batchtopk_fractional", "checkpoint", "batchtopk", {"k": 2.7}, None),
    # attention's per-head output (..., n_heads, d_head), flattened by SAELens (x: (8, 4, 4))
    ("standard_hook_z", "inference", "standard", {"reshape_activations": "hook_z"}, None),
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
        x = fixed_input(seed)
        if flags.get("reshape_activations") == "hook_z":
            x = x.reshape(x.shape[0], N_HEADS, D_IN // N_HEADS)
        loader, saved_with, loaded_with = _save_saelens(registry, arch, flags, seed, folder)
        outputs = _record_saelens(folder, x, loader)
        if registry == "checkpoint":
            outputs |= _saelens_inference_outputs(folder, x)
        write(
            folder,
            outputs,
            {
                "library": "sae_lens",
                "version": version("sae-lens"),
                "saved_with": saved_with,
                "loaded_with": loaded_with,
                "architecture": arch if registry == "pre6" else _saved_arch(folder),
                "flags": flags,
                "hook": _hook(arch, flags),
                "expressible": refusal is None,
                "refusal": refusal,
            },
        )

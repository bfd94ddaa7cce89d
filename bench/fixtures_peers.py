"""sparsify and dictionary_learning fixtures (bench/fixtures.py)."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

from fixtures_common import D_IN, D_SAE, HOOK, K, fixed_input, randomise, write

# ----- sparsify ---------------------------------------------------------------------------------

SPARSIFY: list[tuple[str, dict[str, Any], str | None]] = [
    # name, SparseCoderConfig flags, refusal reason
    ("topk", {}, None),
    ("transcoder", {"transcode": True}, None),
    ("skip", {"skip_connection": True}, None),
    ("groupmax", {"activation": "groupmax"}, "the groupmax activation (saescope has none)"),
]
SPARSIFY_RUN_HOOKS = ("layers.0", "layers.1")
"""A training run's output folder: one SparseCoder folder per hook point, and config.json."""


def _sparsify_coder(flags: dict[str, Any], seed: int):
    from sparsify import SparseCoder, SparseCoderConfig

    cfg = SparseCoderConfig(num_latents=D_SAE, k=K, normalize_decoder=False, **flags)
    coder = SparseCoder(D_IN, cfg)
    randomise(coder, seed)
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
        write(folder, _record_sparsify(folder, fixed_input(seed)), _sparsify_info(flags, refusal))
    # A run's output: one folder per hook point plus the run's config.json (as Trainer.save).
    run = out / "sparsify" / "run"
    cfg = SparseCoderConfig(num_latents=D_SAE, k=K, normalize_decoder=False)
    run.mkdir(parents=True, exist_ok=True)
    TrainConfig(sae=cfg, hookpoints=list(SPARSIFY_RUN_HOOKS)).save_json(run / "config.json")
    for i, hook in enumerate(SPARSIFY_RUN_HOOKS):
        folder = run / hook
        _sparsify_coder({}, 200 + i).save_to_disk(folder)
        info = _sparsify_info({}, None, hook=hook, run="config.json one level up")
        write(folder, _record_sparsify(folder, fixed_input(20 + i)), info)


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
        randomise(ae, 300 + seed, positive=("threshold",))
        if hasattr(ae, "threshold") and ae.threshold.dim() == 0:  # BatchTopK's scalar
            ae.threshold.fill_(0.31)
        # training.py's final save: the state dict with torch.save, config.json beside it
        torch.save({k: v.cpu() for k, v in ae.state_dict().items()}, folder / "ae.pt")
        config = {"trainer": trainer.config}
        (folder / "config.json").write_text(json.dumps(config, indent=4, default=str))
        # the numbers the file holds: loaded back without from_pretrained's renormalisation
        ae.load_state_dict(torch.load(folder / "ae.pt", weights_only=True))
        x = fixed_input(seed)
        with torch.no_grad():
            f = ae.encode(x)
            outputs = {"x": x, "f": f, "x_hat": ae.decode(f), "out": ae(x)}
        write(
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

"""The data of the seed's two interactive demos, on the monosemanticity experiment.

The seed ends with two demos: the **Feature Disentangler** (left, the classifier's hidden
neurons' response to each class, polysemantic; right, the SAE features', monosemantic; a slider
switches among SAEs trained at several sparsities) and the **Sparsity Explorer** (a heatmap of
SAE feature activations over inputs; a click on a bright cell names the feature's class).

`build` trains the experiment's classifier once (`monosemanticity.hidden_activations`) and one
ReLU SAE per L1 coefficient on its hidden activations (from too dense to sparse, so the slider
shows the trade-off), and writes everything both pages draw to one JSON file (atomic);
`saescope explore` serves it under /api/seed (`saescope.explore.seed`). `ensure` builds the file
only when it is missing or from another format version.

Purity is the experiment's: max_c mean(u | c) / sum_c mean(u | c) of a unit u (neuron or SAE
latent) over the classes c; a level's `mean_purity` averages it over the alive units (those
exceeding `fire_threshold` on some input), neurons and features alike. MSE is
`metrics.mse` (squared error summed over the 16 hidden dimensions, mean over inputs) on the raw
hidden activations.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saescope import metrics
from saescope.analysis import index_classes
from saescope.atomic import atomic_write_bytes
from saescope.errors import ConfigError
from saescope.experiments.common import torch_threads
from saescope.experiments.monosemanticity import (
    MonoConfig,
    class_means,
    hidden_activations,
    purity,
    train_sae,
)
from saescope.saes import SAE

FORMAT = 1
"""The JSON layout's version; `ensure` rebuilds a file of another version."""
DEFAULT_PATH = Path("runs") / "demo" / "seed_demos.json"
"""Where `saescope explore` and `saescope demo` keep the file (relative to the working folder)."""
CLASSIFIER_RUN = "seed_classifier"
"""The folder, beside the JSON file, of the default stop's SAE with its classes index:
`saescope explore runs/demo/seed_classifier` browses it."""
DIGITS = 4
"""Decimals kept for the activations in the file (it stays small: about 95 kB)."""


@dataclass(frozen=True)
class DemoConfig:
    """The SAEs of the demos; the data and the classifier are `mono`'s."""

    l1_coefs: tuple[float, ...] = (0.05, 0.2, 0.5, 1.0, 2.0, 4.0)
    """One SAE per L1 coefficient, dense to sparse (the slider's stops, in this order)."""
    default: float = 2.0
    """The slider's starting stop: the experiment's own L1 coefficient."""
    inputs_per_class: int = 6
    """Inputs of each class in the Sparsity Explorer's heatmap."""
    mono: MonoConfig = field(default_factory=lambda: MonoConfig(sae_steps=1500))
    """The monosemanticity experiment's settings (its sae_steps cut from 2000 to 1500)."""


def _round(x: Tensor) -> list:
    return torch.round(x.double(), decimals=DIGITS).tolist()


def _alive(acts: Tensor, threshold: float) -> list[int]:
    """Columns of acts (N, d) that exceed the threshold on some row."""
    return [int(i) for i in (acts > threshold).any(0).nonzero().flatten()]


def _units(
    acts: Tensor, labels: Tensor, n_classes: int, alive: list[int], by_class: bool = True
) -> dict[str, Any]:
    """Class means, dominant class and purity of the alive columns of acts, ordered by
    dominant class, then purity (highest first), or by column when not `by_class`."""
    means = class_means(acts[:, alive], labels, n_classes)
    pur = purity(means).tolist()
    dom = means.argmax(1).tolist()
    order = list(range(len(alive)))
    if by_class:
        order.sort(key=lambda i: (dom[i], -pur[i]))
    return {
        "units": [
            {
                "id": alive[i],
                "class": dom[i],
                "purity": round(pur[i], DIGITS),
                "class_means": _round(means[i]),
            }
            for i in order
        ],
        "mean_purity": statistics.fmean(pur) if pur else 0.0,
        "median_purity": statistics.median(pur) if pur else 0.0,
    }


def sample_inputs(labels: Tensor, per_class: int, seed: int) -> list[int]:
    """`per_class` random inputs of each class, grouped by class (the heatmap's rows)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for c in range(int(labels.max()) + 1):
        idx = (labels == c).nonzero().flatten()
        pick = idx[torch.randperm(idx.numel(), generator=gen)[:per_class]]
        rows.extend(sorted(int(i) for i in pick))
    return rows


def neuron_fvu(H: Tensor, rec: Tensor) -> Tensor:
    """(d_hidden,) each neuron's fraction of variance the reconstruction leaves unexplained
    (0 for a neuron that never varies)."""
    total = (H - H.mean(0)).double().pow(2).sum(0)
    resid = (H - rec).double().pow(2).sum(0)
    return torch.where(total > 1e-12, resid / total.clamp_min(1e-12), torch.zeros_like(total))


def level(
    sae: SAE, l1_coef: float, H: Tensor, labels: Tensor, rows: list[int], mono: MonoConfig
) -> dict[str, Any]:
    """One slider stop: the SAE's metrics, its alive features' class responses and the
    Sparsity Explorer's heatmap (the sampled inputs x the alive features, same order)."""
    with torch.no_grad():
        f = sae.encode(H)
        rec = sae.decode(f)
    feats = _units(f, labels, mono.n_classes, _alive(f, mono.fire_threshold))
    cols = [u["id"] for u in feats["units"]]
    acts = _round(f[rows][:, cols])
    return {
        "l1_coef": l1_coef,
        "l0": metrics.l0(f),
        "mse": metrics.mse(H, rec),
        "explained_variance": metrics.explained_variance(H, rec),
        "alive": len(cols),
        "d_sae": mono.d_sae,
        "mean_purity": feats["mean_purity"],
        "median_purity": feats["median_purity"],
        "neuron_fvu": _round(neuron_fvu(H, rec)),
        "features": feats["units"],
        "heatmap": {
            "features": cols,
            "acts": acts,
            "max": max((v for row in acts for v in row), default=0.0),
        },
    }


def build_data(
    seed: int = 0,
    cfg: DemoConfig = DemoConfig(),
    progress: bool = True,
    sae_dir: Path | None = None,
) -> dict:
    """Everything both demos draw, as a JSON-ready dict (see the module docstring). With
    `sae_dir`, the default stop's SAE is also saved there with its classes index
    (`index_classifier`); the dict's `index_run` names that folder (None without it)."""
    if not cfg.l1_coefs or list(cfg.l1_coefs) != sorted(set(cfg.l1_coefs)):
        raise ConfigError(
            f"l1_coefs {cfg.l1_coefs} must be distinct and increasing (dense to sparse)"
        )
    mono = cfg.mono
    bar = tqdm(total=len(cfg.l1_coefs) + 1, desc="seed demos", unit="model", disable=not progress)
    with torch_threads(mono.threads), bar:
        bar.set_postfix_str("classifier")
        H, labels, accuracy = hidden_activations(seed, mono)
        neurons = _units(H, labels, mono.n_classes, _alive(H, mono.fire_threshold), False)
        rows = sample_inputs(labels, cfg.inputs_per_class, seed)
        bar.update(1)
        levels, stops = [], list(cfg.l1_coefs)
        default = stops.index(cfg.default) if cfg.default in stops else len(stops) - 1
        classes = [f"class {c}" for c in range(mono.n_classes)]
        indexed = None
        for i, l1 in enumerate(stops):
            bar.set_postfix_str(f"SAE L1 {l1}")
            sae = train_sae(H, seed, mono, l1)
            levels.append(level(sae, l1, H, labels, rows, mono))
            if i == default and sae_dir is not None:
                indexed = index_classifier(sae_dir, sae, H, labels, classes, l1)
            bar.update(1)
    return {
        "format": FORMAT,
        "experiment": "monosemanticity",
        "seed": seed,
        "config": {**asdict(cfg), "mono": asdict(mono)},
        "classes": classes,
        "accuracy": accuracy,
        "neurons": {
            "d_hidden": mono.d_hidden,
            "alive": len(neurons["units"]),
            "respond_threshold": mono.respond_threshold,
            **neurons,
        },
        "inputs": [{"index": i, "class": int(labels[i])} for i in rows],
        "default": default,
        "index_run": None if indexed is None else indexed.name,
        "levels": levels,
    }


def index_classifier(
    folder: Path, sae: SAE, H: Tensor, labels: Tensor, classes: list[str], l1_coef: float
) -> Path | None:
    """Save `sae` as a run folder and build its classes index there (each input an example
    whose one token is its class name: `saescope.analysis.index_classes`), so the feature
    browser opens the classifier's SAE."""
    meta = {"experiment": "monosemanticity (seed demos)", "l1_coef": l1_coef}
    sae.save(folder, meta)
    index_classes(folder, sae, H, labels, classes)
    return Path(folder)


def build(
    path: Path = DEFAULT_PATH,
    seed: int = 0,
    cfg: DemoConfig = DemoConfig(),
    progress: bool = True,
    index: bool = True,
) -> Path:
    """Train and measure (`build_data`) and write the JSON file atomically; returns its path.
    With `index`, the default stop's SAE and its classes index go to the CLASSIFIER_RUN folder
    beside it ."""
    path = Path(path)
    data = build_data(seed, cfg, progress, path.parent / CLASSIFIER_RUN if index else None)
    atomic_write_bytes(path, json.dumps(data, separators=(",", ":")).encode())
    return path


def is_current(path: Path) -> bool:
    """Whether `path` holds a demo file of this format version."""
    try:
        return json.loads(Path(path).read_bytes()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def ensure(path: Path | str | None = None, progress: bool = True, **kwargs: Any) -> Path:
    """The demo file at `path` (None: DEFAULT_PATH), built (with a progress bar, 15-20 s
    on one core) when missing or out of date; `saescope explore` calls it."""
    path = DEFAULT_PATH if path is None else Path(path)
    if not is_current(path):
        build(path, progress=progress, **kwargs)
    return Path(path)


def quick_config(steps: int = 300) -> DemoConfig:
    """Few SAE training steps and three stops: the shape of the real file, for tests."""
    return DemoConfig(
        l1_coefs=(0.1, 1.0, 4.0),
        default=1.0,
        inputs_per_class=3,
        mono=replace(MonoConfig(), sae_steps=steps, clf_steps=150),
    )


if __name__ == "__main__":  # python -m saescope.experiments.seed_demos [PATH]
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH))

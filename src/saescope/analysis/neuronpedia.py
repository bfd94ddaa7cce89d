"""Feature dashboards in Neuronpedia's upload layout, as SAEDashboard's `NeuronpediaRunner`
writes it: a folder `{model}_{set}_{hook}_{d_sae}` holding `batch-0.json`, `batch-1.json`, ...
(each `{"model_id", "layer", "sae_set", "features": [...]}`), `run_settings.json` (what was
exported, from what) and, when every feature is exported, `skipped_indexes.json` (the features
that never fired, which Neuronpedia creates as dead). Each feature is built from a
`FeatureIndex`'s `feature(i)` dict and, for the neuron alignment, the SAE's decoder row;
docs/EXPORT.md maps the fields one by one. Values are rounded to 3 decimals, as SAEDashboard's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from saescope.analysis.index import FeatureIndex
from saescope.atomic import atomic_write_bytes
from saescope.errors import ConfigError, InputError
from saescope.models.lm import unembedding
from saescope.runs import Run

DIGITS = 3
"""Decimals kept, as SAEDashboard's converter rounds."""
NEURONS = 3
"""Neurons listed in the neuron alignment (SAEDashboard's FeatureTablesConfig(n_rows=3))."""
ALIGNMENT_KEYS = ("neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1")
LOGIT_BINS = 40
"""Bins of the histogram of a feature's direct logit effects over the vocabulary."""
TOP_BIN = (-1.0, -1.0)
"""(bin_min, bin_contains) of the top-activations group: SAEDashboard's marker for "TOP"."""


class Index(Protocol):
    """What the export reads of a feature index (`saescope.analysis.FeatureIndex`)."""

    @property
    def info(self) -> dict[str, Any]: ...

    def feature(self, i: int) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Settings:
    """The batch-level fields and the per-feature constants of an export."""

    model_id: str
    layer: int
    sae_set: str
    hook: str
    d_sae: int
    dataset: str = ""
    n_prompts_total: int = 0
    n_tokens_in_prompt: int = 0

    @classmethod
    def from_info(cls, info: dict[str, Any], sae_set: str, dataset: str = "") -> Settings:
        """Settings from an index's `info`: the model, the layer (the first number of the hook
        name, 0 without one), the examples indexed and their length in tokens."""
        hook = info.get("hook") or ""
        found = re.search(r"\d+", hook)
        examples = int(info.get("examples") or 0)
        tokens = int(info.get("tokens") or 0)
        return cls(
            model_id=info.get("model") or "",
            layer=int(found.group()) if found else 0,
            sae_set=sae_set,
            hook=hook,
            d_sae=int(info["d_sae"]),
            dataset=dataset,
            n_prompts_total=examples,
            n_tokens_in_prompt=tokens // examples if examples else 0,
        )

    @property
    def folder(self) -> str:
        """SAEDashboard's output folder name: model, set, hook and width."""
        name = f"{self.model_id or 'model'}_{self.sae_set}_{self.hook or 'hook'}_{self.d_sae}"
        return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def _round(values: Sequence[float]) -> list[float]:
    return [round(float(v), DIGITS) for v in values]


def neuron_alignment(row: Tensor, n: int = NEURONS) -> dict[str, list[Any]]:
    """The `n` neurons (input dimensions) a decoder row weighs most, by |weight|: their
    indices, weights, and weights as a fraction of the row's L1 norm (signed)."""
    row = row.detach().float().cpu()
    top = row.abs().topk(min(n, row.numel())).indices
    l1 = float(row.abs().sum()) or 1.0
    values = row[top]
    return {
        "neuron_alignment_indices": top.tolist(),
        "neuron_alignment_values": _round(values.tolist()),
        "neuron_alignment_l1": _round((values / l1).tolist()),
    }


def logit_histogram(row: Tensor, gamma: Tensor, w_u: Tensor) -> tuple[list[float], list[int]]:
    """The histogram of a decoder row's direct logit effect on every token, (row * gamma) @
    W_U (as the index's top and bottom logits): bin centres and counts, LOGIT_BINS bins."""
    logits = (row.detach().float() * gamma.float()) @ w_u.float()
    lo, hi = float(logits.min()), float(logits.max())
    if hi <= lo:
        hi = lo + 1e-6
    counts = torch.histc(logits, LOGIT_BINS, lo, hi)
    width = (hi - lo) / LOGIT_BINS
    return _round([lo + (j + 0.5) * width for j in range(LOGIT_BINS)]), counts.long().tolist()


def _histogram(hist: dict[str, list[Any]]) -> tuple[list[float], list[int]]:
    """Bin centres and counts: SAEDashboard's bar values and bar heights."""
    edges, counts = hist.get("edges") or [], hist.get("counts") or []
    centres = [(a + b) / 2 for a, b in pairwise(edges)]
    return _round(centres), [int(c) for c in counts]


def _share(hist: dict[str, list[Any]], lo: float, hi: float) -> float:
    """The fraction of the feature's firings with an activation in [lo, hi], from its
    histogram (the bins whose centre lies in the interval)."""
    edges, counts = hist.get("edges") or [], hist.get("counts") or []
    total = sum(counts)
    if not total:
        return 0.0
    inside = sum(
        c for (a, b), c in zip(pairwise(edges), counts, strict=False) if lo <= (a + b) / 2 <= hi
    )
    return round(inside / total, DIGITS + 1)


def _activation(example: dict[str, Any], bin_min: float, bin_max: float, contains: float) -> dict:
    return {
        "bin_min": round(bin_min, DIGITS),
        "bin_max": round(bin_max, DIGITS),
        "bin_contains": contains,
        "tokens": list(example["tokens"]),
        "values": _round(example["acts"]),
    }


def activations(feature: dict[str, Any]) -> list[dict[str, Any]]:
    """The top examples (bin_min -1, bin_max the feature's maximum, bin_contains -1, as
    SAEDashboard marks its TOP ACTIVATIONS group), then each interval's samples (bin_min and
    bin_max the interval, bin_contains the fraction of firings inside it)."""
    out = [
        _activation(e, TOP_BIN[0], float(feature["max_act"]), TOP_BIN[1]) for e in feature["top"]
    ]
    for interval in feature.get("intervals") or []:
        lo, hi = float(interval["lo"]), float(interval["hi"])
        share = _share(feature["histogram"], lo, hi)
        out += [_activation(e, lo, hi, share) for e in interval["examples"]]
    return out


def to_neuronpedia(
    feature: dict[str, Any],
    settings: Settings,
    decoder_row: Tensor | None = None,
    unembed: tuple[Tensor, Tensor] | None = None,
) -> dict[str, Any]:
    """One feature of `FeatureIndex.feature(i)` as a Neuronpedia dashboard feature; with its
    decoder row, the neuron alignment, and with the model's (gamma, W_U) too, the logit
    histogram."""
    logits = feature.get("logits") or {"top": [], "bottom": []}
    bar_values, bar_heights = _histogram(feature["histogram"])
    cofiring = feature.get("cofiring") or []
    if decoder_row is not None:
        alignment = neuron_alignment(decoder_row)
    else:
        alignment = {k: [] for k in ALIGNMENT_KEYS}
    logit_values: list[float] = []
    logit_heights: list[int] = []
    if decoder_row is not None and unembed is not None:
        logit_values, logit_heights = logit_histogram(decoder_row, *unembed)
    return {
        "feature_index": int(feature["id"]),
        **alignment,
        "correlated_neurons_indices": [],
        "correlated_neurons_l1": [],
        "correlated_neurons_pearson": [],
        "correlated_features_indices": [int(c["feature"]) for c in cofiring],
        "correlated_features_l1": _round([c["score"] for c in cofiring]),
        "correlated_features_pearson": [],  # the index keeps no counts to compute one
        "neg_str": [t["token"] for t in logits["bottom"]],
        "neg_values": _round([t["value"] for t in logits["bottom"]]),
        "pos_str": [t["token"] for t in logits["top"]],
        "pos_values": _round([t["value"] for t in logits["top"]]),
        "frac_nonzero": round(float(feature["density"]), 6),
        "freq_hist_data_bar_values": bar_values,
        "freq_hist_data_bar_heights": bar_heights,
        "logits_hist_data_bar_heights": logit_heights,
        "logits_hist_data_bar_values": logit_values,
        "n_prompts_total": settings.n_prompts_total,
        "n_tokens_in_prompt": settings.n_tokens_in_prompt,
        "dataset": settings.dataset,
        "decoder_weights_dist": [],
        "activations": activations(feature),
    }


def check_features(features: Sequence[int], d_sae: int) -> list[int]:
    """The ids in order without repeats; a one-line InputError for an id out of range."""
    seen: dict[int, None] = {}
    for i in features:
        if not 0 <= i < d_sae:
            raise InputError(f"feature {i} is out of range: the SAE has features 0 to {d_sae - 1}")
        seen[int(i)] = None
    if not seen:
        raise InputError("no features chosen; give feature ids, e.g. --features 1,5,9")
    return list(seen)


def export_neuronpedia(
    index: Index,
    out: str | Path,
    features: Sequence[int] | None = None,
    decoder: Tensor | None = None,
    unembed: tuple[Tensor, Tensor] | None = None,
    sae_set: str = "saescope",
    dataset: str = "",
    per_batch: int = 128,
) -> Path:
    """Write the chosen features (None: every feature that fired; those that never did go to
        skipped_indexes.json) in Neuronpedia's layout under `out`, `per_batch` features per batch
        file; `decoder` (d_sae, d_in), the SAE's W_dec, gives the neuron alignment, and with
        `unembed` (the model's final-norm scale and W_U, `models.lm.unembedding`) the logit
        histogram. Returns the folder written. Each file is written atomically; an earlier export's
    batch files and skipped list in the same folder are removed first (`remove_stale`)."""
    if per_batch < 1:
        raise InputError(f"per_batch must be at least 1, got {per_batch}")
    info = index.info
    settings = Settings.from_info(info, sae_set, dataset)
    folder = Path(out) / settings.folder
    ids = range(settings.d_sae) if features is None else check_features(features, settings.d_sae)
    remove_stale(folder)
    chosen: list[int] = []
    skipped: list[int] = []
    rows: list[dict[str, Any]] = []
    batches = 0

    def flush() -> None:
        nonlocal batches, rows
        batch = {"model_id": settings.model_id, "layer": settings.layer}
        _write(folder / f"batch-{batches}.json", batch | {"sae_set": sae_set, "features": rows})
        batches, rows = batches + 1, []

    for i in ids:
        feature = index.feature(i)
        if features is None and not feature["fired"]:
            skipped.append(i)
            continue
        chosen.append(i)
        row = decoder[i] if decoder is not None else None
        rows.append(to_neuronpedia(feature, settings, row, unembed))
        if len(rows) == per_batch:
            flush()
    if rows:
        flush()
    if features is None:
        head = {"model_id": settings.model_id, "layer": str(settings.layer)}
        head |= {"sae_set": settings.sae_set, "skipped_indexes": skipped}
        _write(folder / "skipped_indexes.json", head)
    run = {**asdict(settings), "features": chosen, "per_batch": per_batch, "index": info}
    _write(folder / "run_settings.json", run)
    return folder


STALE = re.compile(r"batch-\d+\.json|skipped_indexes\.json")
"""The files of an earlier export into the same folder that a new one may not rewrite."""


def remove_stale(folder: Path) -> list[Path]:
    """Remove an earlier export's batch files and skipped_indexes.json from `folder` (an
    export of fewer features writes fewer batches, and one of chosen features no skipped
    list, so the old ones would be uploaded with it); other files stay. Returns those removed."""
    gone = [p for p in folder.glob("*.json") if STALE.fullmatch(p.name) and p.is_file()]
    for p in gone:
        p.unlink()
    return gone


def _write(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, ensure_ascii=False, allow_nan=False).encode())


def export_run(
    run: Run,
    out: str | Path,
    features: Sequence[int] | None,
    sae: str | None = None,
    sae_set: str | None = None,
    per_batch: int = 128,
) -> Path:
    """`export_neuronpedia` for one SAE of a run (its only one, or `sae`): its index, its
    decoder, the model's unembedding where it has one, the run's text as the dataset, and the
    run folder's name as the set name unless `sae_set` is given."""
    name, model_sae = run.sae(sae)
    index = FeatureIndex.open(run.path, sae=name if len(run.saes) > 1 else None)
    try:
        unembed = None
        if index.info.get("kind") == "lm" and run.data is not None and run.data.model:
            try:
                unembed = unembedding(run.model)
            except ConfigError:  # an encoder: no logits
                unembed = None
        text = run.data.text if run.data is not None else None
        return export_neuronpedia(
            index,
            out,
            features,
            decoder=model_sae.W_dec.detach(),
            unembed=unembed,
            sae_set=sae_set or run.path.name,
            dataset=", ".join(text) if text else "saescope default corpus",
            per_batch=per_batch,
        )
    finally:
        index.close()

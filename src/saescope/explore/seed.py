"""/api/seed: the data of the seed's two demos (the Feature Disentangler and the Sparsity
Explorer), read from the JSON file `saescope.experiments.seed_demos` writes.

The app names the file: `app.state.demo` (a path, or None when the app has no demo). This module
only reads that file (explore must not import experiments); a missing file is a 404 that says
how to make it. The file is re-read when it changes on disk (its mtime), else served from memory.

    GET /api/seed/disentangler      classes, the neurons' class responses and, per slider stop
                                    (levels[i], dense to sparse), L1, L0, MSE, explained variance,
                                    purity, each neuron's unexplained variance and the alive
                                    SAE features' class responses
    GET /api/seed/sparsity?level=i  the Sparsity Explorer's heatmap at stop i (default: the
                                    file's `default`): the sampled inputs with their classes,
                                    the features (id, class, purity) and acts[input][feature];
                                    `index_run`: the run folder's name of the default stop's
                                    SAE with its classes index (null when not built)
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request

FORMAT = 1
"""The file layout this module reads (seed_demos.FORMAT)."""
HOW = "run `saescope explore` (it builds runs/demo/seed_demos.json) or `saescope demo`"

router = APIRouter(prefix="/api/seed", tags=["seed demos"])

_lock = threading.Lock()
_cache: dict[str, tuple[float, dict[str, Any]]] = {}
_SUMMARY = ("l1_coef", "l0", "mse", "explained_variance", "alive", "d_sae", "mean_purity")


def _path(request: Request) -> Path:
    demo = getattr(request.app.state, "demo", None)
    if demo is None:
        raise HTTPException(404, f"this server has no seed demo data; {HOW}")
    return Path(demo)


def load(path: Path) -> dict[str, Any]:
    """The demo file's content (cached until its mtime changes); HTTP 404 with the fix when it
    is missing or not a demo file of this format."""
    try:
        mtime = path.stat().st_mtime
    except OSError:
        raise HTTPException(404, f"no seed demo data at {path}; {HOW}") from None
    key = str(path)
    with _lock:
        hit = _cache.get(key)
        if hit and hit[0] == mtime:
            return hit[1]
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        raise HTTPException(404, f"{path} is not readable JSON; delete it and {HOW}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not data.get("levels"):
        raise HTTPException(
            404, f"{path} is not a seed demo file of format {FORMAT}; delete it and {HOW}"
        )
    with _lock:
        _cache[key] = (mtime, data)
    return data


def _summary(lvl: dict[str, Any]) -> dict[str, Any]:
    return {k: lvl[k] for k in _SUMMARY}


@router.get("/disentangler")
def disentangler(request: Request) -> dict[str, Any]:
    """Neurons' and, per sparsity, SAE features' mean response to each class, with metrics."""
    data = load(_path(request))
    return {
        "classes": data["classes"],
        "seed": data["seed"],
        "accuracy": data["accuracy"],
        "neurons": data["neurons"],
        "default": data["default"],
        "levels": [
            {**_summary(lvl), "neuron_fvu": lvl["neuron_fvu"], "features": lvl["features"]}
            for lvl in data["levels"]
        ],
    }


@router.get("/sparsity")
def sparsity(
    request: Request, level: int | None = Query(None, description="slider stop (0 = densest)")
) -> dict[str, Any]:
    """The heatmap of feature activations over sampled inputs at one sparsity."""
    data = load(_path(request))
    levels = data["levels"]
    i = data["default"] if level is None else level
    if not 0 <= i < len(levels):
        raise HTTPException(404, f"no sparsity level {i}: the levels are 0-{len(levels) - 1}")
    lvl = levels[i]
    return {
        "classes": data["classes"],
        "levels": [_summary(x) for x in levels],
        "level": i,
        "default": data["default"],
        "index_run": data.get("index_run"),
        "inputs": data["inputs"],
        "features": lvl["features"],
        "acts": lvl["heatmap"]["acts"],
        "max": lvl["heatmap"]["max"],
    }

"""A stand-in for `saescope.analysis.FeatureIndex` with the same public API and a few made-up
features, so the app's routes are tested without building an index; the real index is tested
through `indexed_glass` (tests/explore/conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saescope.runs import DataSpec
from saescope.saes import make_sae


def example(n: int, at: int) -> dict[str, Any]:
    tokens = [" the", " Queen", " said", " to", "<b>"]
    acts = [0.0] * len(tokens)
    acts[at] = float(n)
    return {"example": n, "tokens": tokens, "acts": acts, "max": float(n), "at": at}


class FakeIndex:
    """Features 0..d_sae-1; feature i fired i times (0 never)."""

    def __init__(self, d_sae: int = 8) -> None:
        self.d_sae = d_sae
        self.closed = False
        self.info = {
            "path": "fake",
            "sae": "fake",
            "architecture": "topk",
            "d_sae": d_sae,
            "d_in": 4,
            "kind": "lm",
            "model": "glassllm",
            "hook": "layers.2",
            "tokens": 1000,
            "examples": 40,
        }

    def feature(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.d_sae:
            raise AssertionError("the app must check the range first")
        nb = [(i + 1) % self.d_sae, (i + 2) % self.d_sae]
        return {
            "id": i,
            "density": i / 1000,
            "max_act": float(i),
            "mean_act": i / 2,
            "fired": i,
            "histogram": {"edges": [0.0, 1.0, 2.0, 3.0], "counts": [i, 2, 1]},
            "top": [example(i, 1), example(max(i - 1, 0), 4)],
            "intervals": [{"lo": 0.0, "hi": 1.0, "examples": [example(1, 2)]}],
            "logits": {
                "top": [{"token": " Queen", "value": 1.5}],
                "bottom": [{"token": " King", "value": -1.0}],
            },
            "cofiring": [{"feature": nb[0], "score": 0.5}],
            "neighbours": [{"feature": nb[1], "cosine": 0.9}],
        }

    def search_token(self, token: str, limit: int = 20) -> list[dict[str, Any]]:
        hits = [3, 5] if token == " Queen" else []
        return [{"feature": f, "count": 2, "mean_act": 1.0, "density": 0.1} for f in hits][:limit]

    def search_text(self, text: str, limit: int = 20) -> list[dict[str, Any]]:
        hits = [1, 2, 4] if "Queen" in text else []
        return [{"feature": f, "count": 1, "density": 0.1} for f in hits][:limit]

    def features(
        self,
        order: str = "density",
        descending: bool = True,
        lo: float | None = None,
        hi: float | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[dict]:
        rows = [{"feature": i, "density": i / 1000, "max_act": float(i)} for i in range(self.d_sae)]
        rows = [
            r
            for r in rows
            if (lo is None or r["density"] >= lo) and (hi is None or r["density"] <= hi)
        ]
        rows.sort(key=lambda r: r[order], reverse=descending)
        return rows[offset : offset + limit]

    def close(self) -> None:
        self.closed = True


LOCAL = "http://127.0.0.1"
"""The base URL of the tests' TestClient: a Host the app accepts (its default, testserver, gets
400 from the Host check)."""

GLASS = DataSpec("model", model="glassllm", hook="layers.2", context=128)


def random_run(path: Path, d_sae: int = 64) -> Path:
    """A run folder of an untrained TopK SAE on glassllm's layers.2 (no training: quick)."""
    torch.manual_seed(0)
    sae = make_sae({"architecture": "topk", "d_in": 128, "d_sae": d_sae, "k": 4})
    return sae.save(path, {"data": GLASS.to_dict()})

"""Pareto plots of a sweep: a metric against L0, one line per architecture, with the dead
fraction against L0 in a panel beside it (the field's way of comparing SAEs: Gao et al. 2024,
Rajamanoharan et al. 2024, SAEBench). Figures are made without pyplot (`report.subplots`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from saescope.report import subplots

LABELS = {
    "explained_variance": "explained variance",
    "ce_loss_recovered": "CE loss recovered",
    "dead_fraction": "dead fraction",
    "mmcs": "mean max cosine to true features",
}


def by_architecture(
    rows: Sequence[dict[str, Any]], metric: str
) -> dict[str, list[tuple[float, float]]]:
    """{architecture: [(l0, metric), ...] sorted by L0}, rows without the metric (or with a
    NaN) left out, architectures in the rows' order."""
    lines: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        l0, y = r.get("l0"), r.get(metric)
        if l0 is None or y is None or y != y or l0 != l0:
            continue
        lines.setdefault(str(r["architecture"]), []).append((float(l0), float(y)))
    return {a: sorted(points) for a, points in lines.items()}


def has_metric(rows: Sequence[dict[str, Any]], metric: str) -> bool:
    """Whether any row has a finite value of `metric`."""
    return any(by_architecture(rows, metric).values())


def pareto_figure(rows: Sequence[dict[str, Any]], metric: str, title: str = "") -> Figure:
    """`metric` against L0 (log scale), one line per architecture, and beside it the dead
    fraction against L0: the sweep's rows (each with architecture, l0, the metric and
    dead_fraction)."""
    fig, (ax, dead) = subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for arch, points in by_architecture(rows, metric).items():
        ax.plot(*zip(*points, strict=True), marker="o", label=arch)
    top = 0.1
    for arch, points in by_architecture(rows, "dead_fraction").items():
        dead.plot(*zip(*points, strict=True), marker="o", label=arch)
        top = max(top, *(p[1] for p in points))
    dead.set_ylim(-0.02 * top, 1.05 * top)  # 0 at the bottom, whatever the values
    for a, name in ((ax, metric), (dead, "dead_fraction")):
        a.set_xscale("log", base=2)
        a.set_xlabel("L0 (latents per token, held out)")
        a.set_ylabel(LABELS.get(name, name))
        a.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title or f"{LABELS.get(metric, metric)} vs L0 (up and left is better)")
    dead.set_title("dead fraction vs L0")
    return fig

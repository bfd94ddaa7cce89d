"""Plain-text formatting for the terminal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _clip(s: str, width: int | None) -> str:
    return s if width is None or len(s) <= width else s[: width - 1] + "…"


def table(rows: Sequence[dict[str, Any]], cols: Sequence[str], max_width: int | None = None) -> str:
    """An aligned text table of `cols` from each row dict; cells longer than max_width are
    cut with an ellipsis."""
    cells = [list(cols)] + [[_clip(fmt(r.get(c, "")), max_width) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

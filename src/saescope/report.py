"""One self-contained HTML page of claims, measurements and figures (no network needed).

An experiment turns its result into a `Section`: the seed's claims, each with the number
measured beside it and whether it held, plus matplotlib figures (inlined as PNG data URIs)
and optional tables. `render` writes the page; `summary_rows` gives the terminal table.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from saescope.atomic import atomic_write_bytes

_FIGURE_KEYS = ("figsize", "dpi", "constrained_layout", "layout")


@dataclass
class Claim:
    """One claim of the seed, the number measured for it, and whether it held."""

    claim: str
    measured: str
    holds: bool


@dataclass
class Section:
    """One experiment on the page. `key` is the anchor id tests look for."""

    key: str
    title: str
    text: str
    claims: list[Claim] = field(default_factory=list)
    figures: list[tuple[str, Figure]] = field(default_factory=list)  # (caption, figure)
    tables: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)


def subplots(nrows: int = 1, ncols: int = 1, **kw: Any) -> tuple[Figure, Any]:
    """`pyplot.subplots` without pyplot: a `Figure` of its own (figsize, dpi, layout keywords)
    and its axes. No backend is selected and no global figure list grows, so importing or
    plotting changes nothing outside the figure."""
    fig = Figure(**{k: kw.pop(k) for k in _FIGURE_KEYS if k in kw})
    return fig, fig.subplots(nrows, ncols, **kw)


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write the figure as a PNG file, atomically."""
    path = Path(path)
    atomic_write_bytes(path, figure_png(fig, dpi))
    return path


def figure_uri(fig: Figure, dpi: int = 110) -> str:
    """A PNG data URI of the figure."""
    return "data:image/png;base64," + base64.b64encode(figure_png(fig, dpi)).decode("ascii")


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table_html(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p><em>(no rows)</em></p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _claims_html(claims: list[Claim]) -> str:
    rows = "".join(
        f'<tr class="{"ok" if c.holds else "no"}"><td>{html.escape(c.claim)}</td>'
        f"<td>{html.escape(c.measured)}</td>"
        f"<td>{'holds' if c.holds else 'does not hold'}</td></tr>"
        for c in claims
    )
    return (
        '<table class="claims"><thead><tr><th>claim</th><th>measured</th><th>verdict</th>'
        f"</tr></thead><tbody>{rows}</tbody></table>"
    )


def _section_html(s: Section) -> str:
    parts = [f'<section id="{html.escape(s.key)}"><h2>{html.escape(s.title)}</h2>']
    parts.append(f"<p>{html.escape(s.text)}</p>")
    if s.claims:
        parts.append(_claims_html(s.claims))
    for caption, fig in s.figures:
        parts.append(
            f'<figure><img alt="{html.escape(caption)}" src="{figure_uri(fig)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    for caption, rows in s.tables:
        parts.append(f"<h3>{html.escape(caption)}</h3>{_table_html(rows)}")
    parts.append("</section>")
    return "\n".join(parts)


CSS = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} section{border-top:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}
tr.ok td:last-child{color:#1a7f37;font-weight:bold}
tr.no td:last-child{color:#cf222e;font-weight:bold}
figure{margin:1em 0} img{max-width:100%} figcaption{font-size:.9em;color:#555}
nav a{margin-right:1em}
"""


def render(sections: Sequence[Section], path: str | Path, title: str, intro: str = "") -> Path:
    """Write the page atomically to `path` and return it."""
    path = Path(path)
    nav = " ".join(f'<a href="#{html.escape(s.key)}">{html.escape(s.title)}</a>' for s in sections)
    held = sum(c.holds for s in sections for c in s.claims)
    total = sum(len(s.claims) for s in sections)
    body = "\n".join(_section_html(s) for s in sections)
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>"
        f"<p><strong>{held} of {total} claims hold.</strong></p><nav>{nav}</nav>"
        f"{body}</body></html>"
    )
    atomic_write_bytes(path, page.encode("utf-8"))
    return path


def summary_rows(sections: Sequence[Section]) -> list[dict[str, Any]]:
    """One row per claim, for the terminal table."""
    return [
        {
            "section": s.key,
            "claim": c.claim,
            "measured": c.measured,
            "holds": "yes" if c.holds else "NO",
        }
        for s in sections
        for c in s.claims
    ]

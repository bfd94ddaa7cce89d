"""One self-contained HTML page of claims, measurements and figures (no network needed).

An experiment turns its result into a `Section`: the seed's claims, each with the number
measured beside it and whether it held, plus matplotlib figures (inlined as PNG data URIs)
and optional tables. `render` writes the page; `summary_rows` gives the terminal table. A run
at reduced settings (`saescope demo --quick`) marks the claims that failed as not checked
(`unchecked`) and says so in a banner: a sliver of the training cannot refute a claim.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
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
    holds: bool | None
    """True or False; None: not checked (measured at settings too small to decide it)."""

    def __post_init__(self) -> None:
        if self.holds is not None:
            self.holds = bool(self.holds)  # numpy and torch booleans too

    @property
    def verdict(self) -> str:
        """The words on the page: holds, does not hold, or not checked at these settings."""
        return VERDICTS[self.holds][1]


VERDICTS: dict[bool | None, tuple[str, str]] = {
    True: ("ok", "holds"),
    False: ("no", "does not hold"),
    None: ("unchecked", "not checked at these settings"),
}
"""Each state of a claim: its CSS class and its words on the page."""


@dataclass
class Section:
    """One experiment on the page. `key` is the anchor id tests look for."""

    key: str
    title: str
    text: str
    claims: list[Claim] = field(default_factory=list)
    figures: list[tuple[str, Figure]] = field(default_factory=list)  # (caption, figure)
    tables: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)


def unchecked(sections: Sequence[Section]) -> list[Section]:
    """The sections with every claim that does not hold marked not checked (holds None): for a
    run at reduced settings, where a failure says nothing about the claim. Claims that hold
    stay as they are."""
    return [
        replace(s, claims=[replace(c, holds=None) if c.holds is False else c for c in s.claims])
        for s in sections
    ]


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
    return _scroll(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _scroll(table: str) -> str:
    """A table inside a box that scrolls sideways when the table is wider than the section,
    so the page itself never does."""
    return f'<div class="scroll">{table}</div>'


def _claims_html(claims: list[Claim]) -> str:
    rows = "".join(
        f'<tr class="{VERDICTS[c.holds][0]}"><td>{html.escape(c.claim)}</td>'
        f"<td>{html.escape(c.measured)}</td><td>{c.verdict}</td></tr>"
        for c in claims
    )
    return _scroll(
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
.scroll{display:block;max-width:100%;overflow-x:auto;margin:.8em 0}
table{border-collapse:collapse;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;overflow-wrap:break-word}
tr.ok td:last-child{color:#1a7f37;font-weight:bold}
tr.no td:last-child{color:#cf222e;font-weight:bold}
tr.unchecked td:last-child{color:#6e7781;font-style:italic}
.banner{background:#fff8c5;border:1px solid #d4a72c;padding:.6em 1em}
figure{margin:1em 0} img{max-width:100%} figcaption{font-size:.9em;color:#555}
nav a{margin-right:1em}
"""


def tally(sections: Sequence[Section]) -> str:
    """How many claims hold, e.g. "7 of 9 claims hold" (and how many were not checked)."""
    claims = [c for s in sections for c in s.claims]
    held = sum(c.holds is True for c in claims)
    out = f"{held} of {len(claims)} claims hold"
    skipped = sum(c.holds is None for c in claims)
    return out + (f"; {skipped} not checked at these settings" if skipped else "")


def render(
    sections: Sequence[Section], path: str | Path, title: str, intro: str = "", banner: str = ""
) -> Path:
    """Write the page atomically to `path` and return it. `banner`: a notice above
    everything else (what kind of run this is)."""
    path = Path(path)
    nav = " ".join(f'<a href="#{html.escape(s.key)}">{html.escape(s.title)}</a>' for s in sections)
    body = "\n".join(_section_html(s) for s in sections)
    notice = f'<p class="banner"><strong>{html.escape(banner)}</strong></p>' if banner else ""
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"{notice}<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>"
        f"<p><strong>{tally(sections)}.</strong></p><nav>{nav}</nav>"
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
            "holds": {True: "yes", False: "NO", None: "not checked"}[c.holds],
        }
        for s in sections
        for c in s.claims
    ]

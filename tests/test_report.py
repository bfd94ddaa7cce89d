"""The HTML report: figures without pyplot, PNG bytes, files and data URIs, the page itself
(atomic, complete, escaped, offline) and the terminal rows; importing it leaves matplotlib's
backend alone."""

import base64
import re
import struct
import subprocess
import sys

import numpy as np
from matplotlib.figure import Figure

from saescope.report import (
    Claim,
    Section,
    figure_png,
    figure_uri,
    render,
    save_figure,
    subplots,
    summary_rows,
    tally,
    unchecked,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk."""
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _figure(label: str = "a") -> Figure:
    fig, ax = subplots(figsize=(2, 1.5))
    ax.plot([0, 1, 2], [1, 0, 2], label=label)
    return fig


def test_subplots_gives_a_figure_of_its_own():
    fig, axes = subplots(1, 3, figsize=(6, 2), dpi=50, sharey=True)
    assert isinstance(fig, Figure) and len(axes) == 3
    assert tuple(fig.get_size_inches()) == (6, 2) and fig.dpi == 50
    assert axes[0].get_shared_y_axes().joined(axes[0], axes[2])
    assert fig.canvas.manager is None  # not a pyplot figure: no global figure list grows
    one, ax = subplots()
    assert ax.figure is one and not hasattr(ax, "__len__")


def test_figure_png_is_a_png_at_the_asked_dpi():
    fig = _figure()
    small, big = figure_png(fig, dpi=50), figure_png(fig, dpi=100)
    assert small.startswith(PNG) and big.startswith(PNG)
    (w, h), (w2, h2) = _png_size(small), _png_size(big)
    assert abs(w2 - 2 * w) <= 2 and abs(h2 - 2 * h) <= 2 and w > 50


def test_save_figure_writes_atomically_and_makes_the_folder(tmp_path):
    fig = _figure()
    path = tmp_path / "deep" / "er" / "fig.png"
    assert save_figure(fig, path, dpi=40) == path
    assert path.read_bytes().startswith(PNG)
    assert _png_size(path.read_bytes()) == _png_size(figure_png(fig, dpi=40))
    save_figure(fig, str(path), dpi=80)  # over the old file
    assert _png_size(path.read_bytes()) != _png_size(figure_png(fig, dpi=40))
    assert [p.name for p in path.parent.iterdir()] == ["fig.png"]  # no temp file


def test_figure_uri_is_the_png_base64():
    fig = _figure()
    uri = figure_uri(fig, dpi=30)
    assert uri.startswith("data:image/png;base64,")
    data = base64.b64decode(uri.split(",", 1)[1], validate=True)
    assert data.startswith(PNG) and _png_size(data) == _png_size(figure_png(fig, dpi=30))


def _sections() -> list[Section]:
    return [
        Section(
            "alpha",
            "First & best",
            "Intro <b>text</b>",
            claims=[
                Claim("x < y holds for <script>alert(1)</script>", "0.3 < 0.5", True),
                Claim("a claim that fails", "measured \"42\" & 'more'", False),
            ],
            figures=[("caption one <i>", _figure("one")), ("caption two", _figure("two"))],
            tables=[("A table", [{"k": 3, "value": 0.123456789, "name": "<n>"}])],
        ),
        Section("beta", "Second", "More", claims=[Claim("third claim", "yes", True)]),
        Section("gamma", "Empty", "", tables=[("Nothing", [])]),
    ]


def test_render_writes_every_section_atomically(tmp_path):
    path = tmp_path / "out" / "report.html"
    path.parent.mkdir()
    path.write_text("old")
    sections = _sections()
    assert render(sections, path, "My <report>", intro="an intro") == path
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]
    page = path.read_text()
    assert page.startswith("<!doctype html>") and page.endswith("</html>")
    assert "<title>My &lt;report&gt;</title>" in page and "<p>an intro</p>" in page
    assert "<strong>2 of 3 claims hold.</strong>" in page
    for s in sections:
        assert f'<section id="{s.key}">' in page and f'<a href="#{s.key}">' in page
    assert page.count("<section ") == 3
    assert "third claim" in page and "a claim that fails" in page
    assert page.count('<tr class="ok">') == 2 and page.count('<tr class="no">') == 1
    assert page.count("<img ") == 2 and page.count("<figcaption>") == 2
    assert "<figcaption>caption two</figcaption>" in page
    assert "<td>0.1235</td>" in page and "<td>3</td>" in page  # floats to 4 digits
    assert "<h3>Nothing</h3><p><em>(no rows)</em></p>" in page


def test_render_escapes_every_text(tmp_path):
    page = render(_sections(), tmp_path / "r.html", "t").read_text()
    assert "<script>" not in page and "<b>text" not in page and "<i>" not in page
    assert "x &lt; y holds for &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "measured &quot;42&quot; &amp; &#x27;more&#x27;" in page
    assert "First &amp; best" in page and "<td>&lt;n&gt;</td>" in page
    assert 'alt="caption one &lt;i&gt;"' in page


def test_the_page_needs_no_network(tmp_path):
    page = render(_sections(), tmp_path / "r.html", "t").read_text()
    assert "http://" not in page and "https://" not in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', page))
    assert "<script" not in page and "<link" not in page


def test_summary_rows_one_per_claim():
    rows = summary_rows(_sections())
    assert rows == [
        {
            "section": "alpha",
            "claim": "x < y holds for <script>alert(1)</script>",
            "measured": "0.3 < 0.5",
            "holds": "yes",
        },
        {
            "section": "alpha",
            "claim": "a claim that fails",
            "measured": "measured \"42\" & 'more'",
            "holds": "NO",
        },
        {"section": "beta", "claim": "third claim", "measured": "yes", "holds": "yes"},
    ]
    assert summary_rows([]) == []


def test_a_claim_is_held_failed_or_not_checked():
    assert [Claim("c", "m", h).verdict for h in (True, False, None)] == [
        "holds",
        "does not hold",
        "not checked at these settings",
    ]
    assert Claim("c", "m", np.bool_(False)).holds is False  # numpy booleans become bools
    assert Claim("c", "m", np.float64(1.0) > 0).holds is True


def test_unchecked_marks_only_the_failed_claims_and_copies():
    sections = _sections()
    marked = unchecked(sections)
    assert [[c.holds for c in s.claims] for s in marked] == [[True, None], [True], []]
    assert [c.holds for c in sections[0].claims] == [True, False]  # the originals unchanged
    assert [s.key for s in marked] == ["alpha", "beta", "gamma"]
    assert marked[0].figures == sections[0].figures and marked[2].tables == sections[2].tables
    assert tally(sections) == "2 of 3 claims hold"
    assert tally(marked) == "2 of 3 claims hold; 1 not checked at these settings"


def test_a_reduced_run_says_so_and_checks_nothing_it_could_not(tmp_path):
    plain = render(_sections(), tmp_path / "full.html", "t").read_text()
    assert 'class="banner"' not in plain and "does not hold" in plain
    banner = "Quick run: reduced settings; claims are checked at full settings by <demo>"
    page = render(unchecked(_sections()), tmp_path / "q.html", "t", banner=banner).read_text()
    assert '<p class="banner"><strong>Quick run: reduced settings;' in page
    assert "by &lt;demo&gt;" in page  # escaped like every other text
    assert page.index('class="banner"') < page.index("<h1>")  # above everything
    assert "does not hold" not in page and '<tr class="no">' not in page
    assert page.count('<tr class="unchecked">') == 1 and page.count('<tr class="ok">') == 2
    assert "<td>not checked at these settings</td>" in page
    assert "<strong>2 of 3 claims hold; 1 not checked at these settings.</strong>" in page
    assert "tr.unchecked td:last-child{" in page  # styled apart from holds / does not hold
    rows = summary_rows(unchecked(_sections()))
    assert [r["holds"] for r in rows] == ["yes", "not checked", "yes"]


def test_wide_tables_scroll_inside_their_section(tmp_path):
    wide = [{f"column {i}": "x" * 40 for i in range(30)}]
    sections = [*_sections(), Section("wide", "Wide", "", tables=[("wide", wide)])]
    page = render(sections, tmp_path / "r.html", "t").read_text()
    tables = page.count("<table")
    assert tables == 4  # two claims tables, two tables with rows ("no rows" is a paragraph)
    assert page.count('<div class="scroll"><table') == tables
    assert page.count("</table></div>") == tables
    css = re.search(r"\.scroll\{([^}]*)\}", page)
    assert css and {"display:block", "max-width:100%", "overflow-x:auto"} <= set(
        css.group(1).split(";")
    )
    assert "max-width:1000px" in page  # the body fits a 1280 px window; nothing widens it


_BACKEND = """
import matplotlib
matplotlib.use("pdf")
import saescope, saescope.report, saescope.experiments.demo, saescope.evaluate
from saescope.report import subplots, figure_png
fig, ax = subplots()
ax.plot([0, 1])
assert figure_png(fig).startswith(b"\\x89PNG")
print(matplotlib.get_backend())
"""


def test_importing_and_plotting_leave_the_backend_alone():
    out = subprocess.run([sys.executable, "-c", _BACKEND], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "pdf"

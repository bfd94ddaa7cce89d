"""`saescope demo` writes one self-contained report with every section and figure."""

import json
import re

import pytest

from saescope.cli import main
from saescope.experiments.demo import EXPERIMENTS

SECTIONS = [
    "intro",
    "five-in-two",
    "phase-diagram",
    "geometry",
    "recovery",
    "correlated",
    "shrinkage",
    "monosemanticity",
    "absorption",
]


@pytest.mark.slow
def test_quick_demo_writes_every_section_and_figure(tmp_path, capsys):
    assert main(["demo", "--quick", "--seeds", "1", "--out", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    # Every experiment ran (its timing is recorded) and the page holds exactly the sections.
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert list(summary["timings_s"]) == [e.name for e in EXPERIMENTS]
    assert re.findall(r'<section id="([^"]+)">', page) == SECTIONS
    for key in SECTIONS:
        m = re.search(f'<section id="{key}">(.*?)</section>', page, re.S)
        assert m, key
        body = m.group(1)
        assert 'src="data:image/png;base64,' in body, key  # its figure, inlined
        assert 'class="claims"' in body, key
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert {r["section"] for r in summary["claims"]} == set(SECTIONS)
    assert "claims hold" in capsys.readouterr().out

"""`saescope demo` writes one self-contained report with every section and figure."""

import json
import re

import pytest

from saescope.cli import main
from saescope.experiments import demo
from saescope.experiments.demo import EXPERIMENTS
from saescope.report import Claim, Section

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
    "pareto",
    "steering",
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
    assert summary["quick"] is True and 'class="banner"' in page and "Quick run" in page
    assert "does not hold" not in page  # a sliver of training refutes nothing
    assert {r["holds"] for r in summary["claims"]} <= {"yes", "not checked"}


def _sections() -> list[Section]:
    claims = [Claim("holds at any setting", "1 < 2", True), Claim("needs training", "0.4", False)]
    return [Section("one", "One", "text", claims=claims)]


@pytest.mark.parametrize("quick", [True, False])
def test_the_report_says_whether_it_is_a_quick_run(tmp_path, capsys, quick):
    shown = demo.write(_sections(), tmp_path, quick=quick, timings={"one": 1.5})
    page = (tmp_path / "report.html").read_text()
    summary = json.loads((tmp_path / "demo.json").read_text())
    out = capsys.readouterr().out
    assert summary["quick"] is quick and summary["timings_s"] == {"one": 1.5}
    verdicts = [r["holds"] for r in summary["claims"]]
    assert [c.holds for c in shown[0].claims] == [True, None if quick else False]
    if quick:  # the failed claim: not checked, not refuted; the page and terminal say why
        assert verdicts == ["yes", "not checked"]
        assert demo.QUICK_BANNER.split(":")[0] in page and "does not hold" not in page
        assert "<td>not checked at these settings</td>" in page
        assert "Quick run" in out and "1 of 2 claims hold; 1 not checked at these settings" in out
    else:  # the full run keeps holds / does not hold
        assert verdicts == ["yes", "NO"]
        assert 'class="banner"' not in page and "<td>does not hold</td>" in page
        assert "Quick run" not in out and "1 of 2 claims hold. Report:" in out


def _fake(name: str) -> demo.Experiment:
    def run(seeds: list[int], quick: bool) -> Section:
        return Section(name, name.title(), f"seeds {seeds}", [Claim("ran", str(seeds), True)])

    return demo.Experiment(name, run, all_seeds=name == "cheap", seconds=1)


def test_one_job_runs_in_this_process_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "EXPERIMENTS", (_fake("cheap"), _fake("costly")))
    shown = demo.run(tmp_path, seeds=2, jobs=1)
    assert [(s.key, s.text) for s in shown] == [("cheap", "seeds [0, 1]"), ("costly", "seeds [0]")]
    assert list(json.loads((tmp_path / "demo.json").read_text())["timings_s"]) == [
        "cheap",
        "costly",
    ]


def test_jobs_below_one_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"jobs must be at least 1.*--jobs"):
        demo.run(tmp_path, jobs=0)


def test_an_error_in_a_worker_stops_the_demo():
    # A worker that fails (here: an experiment that does not exist) raises in the parent.
    with pytest.raises(IndexError):
        demo._run_parallel([(len(EXPERIMENTS), [0])], quick=True, jobs=2, bar=demo.tqdm())

"""`FeatureIndex` on a classes index: each page against brute force on the same activations,
the searches and browsing, bad ids and arguments as one-line InputErrors, and many threads at
once."""

import json
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from saescope.analysis import FeatureIndex
from saescope.errors import InputError
from tests.analysis.common import CFG, CLASSES, D_SAE, build


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path, sae, acts, labels = build(tmp_path_factory.mktemp("classes"))
    with torch.no_grad():
        f = sae.encode(acts)
    idx = FeatureIndex.open(path)
    yield idx, f, labels
    idx.close()


def test_info(built):
    idx, f, _ = built
    info = idx.info
    assert (
        info["kind"] == "classes" and info["d_sae"] == D_SAE and info["d_in"] == f.shape[0] * 0 + 8
    )
    assert info["tokens"] == info["examples"] == f.shape[0]
    assert info["model"] is None and info["hook"] is None and info["architecture"] == "topk"
    json.dumps(info)


def test_every_page_matches_brute_force(built):
    idx, f, labels = built
    for i in range(D_SAE):
        page = idx.feature(i)
        json.dumps(page)
        col = f[:, i]
        on = col > 0
        assert page["id"] == i and page["fired"] == int(on.sum())
        assert page["density"] == pytest.approx(float(on.float().mean()))
        assert page["max_act"] == pytest.approx(float(col.max()))
        if not on.any():
            assert (
                page["top"] == [] and page["intervals"] == [] and page["histogram"]["counts"] == []
            )
            continue
        assert page["mean_act"] == pytest.approx(float(col[on].mean()), rel=1e-5)
        order = torch.argsort(col, descending=True)[: min(CFG.top, int(on.sum()))]
        assert [e["example"] for e in page["top"]] == order.tolist()
        for e in page["top"]:
            assert e["tokens"] == [CLASSES[labels[e["example"]]]] and e["at"] == 0
            assert e["acts"] == [pytest.approx(float(col[e["example"]]))] == [e["max"]]
        h = page["histogram"]
        assert sum(h["counts"]) == page["fired"] and len(h["edges"]) == len(h["counts"]) + 1
        assert h["edges"] == sorted(h["edges"]) and h["edges"][-1] == pytest.approx(page["max_act"])
        spans = [(s["lo"], s["hi"]) for s in page["intervals"]]
        assert 1 <= len(spans) <= CFG.intervals and spans == sorted(spans, reverse=True)
        for v in col[on].tolist():  # every firing falls in an interval
            assert any(lo <= v <= hi * (1 + 1e-6) for lo, hi in spans)
        for s in page["intervals"]:
            assert 1 <= len(s["examples"]) <= CFG.interval_examples
            maxes = [e["max"] for e in s["examples"]]
            assert maxes == sorted(maxes, reverse=True)
            for e in s["examples"]:
                assert s["lo"] <= e["max"] <= s["hi"] * (1 + 1e-6)
                assert e["max"] == pytest.approx(float(col[e["example"]]))
        assert page["logits"] is None
        assert len(page["neighbours"]) == CFG.neighbours
        assert all(0 < c["score"] <= 1 and c["feature"] != i for c in page["cofiring"])


def test_search_token_finds_the_features_that_peak_on_a_class(built):
    idx = built[0]
    for name in CLASSES:
        got = idx.search_token(name, limit=D_SAE)
        assert got, name
        for r in got:
            top = [e for e in idx.feature(r["feature"])["top"] if e["tokens"] == [name]]
            assert r["count"] == len(top) > 0
            assert r["mean_act"] == pytest.approx(sum(e["max"] for e in top) / len(top))
        counts = [r["count"] for r in got]
        assert counts == sorted(counts, reverse=True)
    assert idx.search_token(" Queen") == []


def test_search_text_and_browse(built):
    idx, _, _ = built
    got = idx.search_text("ee", limit=100)  # bee, eel
    assert got and all(r["count"] >= 1 for r in got)
    for r in got:
        assert any("ee" in "".join(e["tokens"]) for e in idx.feature(r["feature"])["top"])
    dens = idx.features(limit=D_SAE)
    assert [r["density"] for r in dens] == sorted((r["density"] for r in dens), reverse=True)
    assert sorted(r["feature"] for r in dens) == list(range(D_SAE))
    page = idx.features("max_act", descending=False, lo=0.05, hi=0.5, limit=3, offset=1)
    assert len(page) <= 3 and all(0.05 <= r["density"] <= 0.5 for r in page)
    assert [r["max_act"] for r in page] == sorted(r["max_act"] for r in page)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda i: i.feature(D_SAE), f"feature {D_SAE} is out of range"),
        (lambda i: i.feature(-1), "is out of range"),
        (lambda i: i.feature("3"), "a feature id is an integer"),
        (lambda i: i.search_token(""), "is empty"),
        (lambda i: i.search_text("x", limit=0), "limit must be"),
        (lambda i: i.features(order="name"), "order must be one of"),
        (lambda i: i.features(lo=float("nan")), "density bounds are numbers"),
    ],
)
def test_bad_arguments_are_one_line_input_errors(built, call, message):
    with pytest.raises(InputError, match=message) as e:
        call(built[0])
    assert "\n" not in str(e.value)


def test_many_threads_read_the_same_pages(built):
    idx = built[0]
    want = {i: idx.feature(i) for i in range(D_SAE)}
    seen = set()

    def read(j: int):
        seen.add(threading.get_ident())
        i = j % D_SAE
        assert idx.feature(i) == want[i]
        return idx.search_token(CLASSES[j % len(CLASSES)])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(read, range(400)))
    assert len(seen) > 1 and all(isinstance(r, list) for r in results)


def test_open_names_the_missing_index_and_bad_files(tmp_path):
    from tests.steer.common import random_topk

    random_topk(4, 8, 2, seed=0).save(tmp_path / "run")
    with pytest.raises(InputError, match="is not indexed; run saescope index"):
        FeatureIndex.open(tmp_path / "run")
    with pytest.raises(InputError, match="holds no saved SAE"):
        FeatureIndex.open(tmp_path)
    bad = tmp_path / "x.sqlite"
    sqlite3.connect(bad).close()
    with pytest.raises(Exception, match="is not a saescope index"):
        FeatureIndex.open(bad)


def test_closed_index_refuses(tmp_path):
    path = build(tmp_path)[0]
    idx = FeatureIndex.open(path)
    idx.feature(0)
    idx.close()
    with pytest.raises(InputError, match="is closed"):
        idx.feature(0)

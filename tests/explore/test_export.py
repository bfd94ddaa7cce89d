"""The exports of an indexed glassllm run: the offline HTML file opened in Chromium from disk
with every network request refused (each chosen feature shown, the list and a co-firing chip
switch among them, no page errors), and the Neuronpedia batch JSON, field by field against
`FeatureIndex.feature` and the SAE's decoder."""

from __future__ import annotations

import json
import math
import re
from itertools import pairwise

import pytest

from saescope.analysis import FeatureIndex, export_neuronpedia
from saescope.errors import InputError
from saescope.explore.export import export_html
from saescope.models.lm import unembedding
from saescope.runs import Run
from tests.explore.common import FakeIndex


@pytest.fixture(scope="module")
def index(indexed_glass):
    idx = FeatureIndex.open(indexed_glass)
    yield idx
    idx.close()


@pytest.fixture(scope="module")
def chosen(index) -> list[int]:
    """Three features that fired, the first with a co-firing feature among the others."""
    first = next(
        r["feature"]
        for r in index.features("density", limit=50)
        if index.feature(r["feature"])["cofiring"]
    )
    partner = index.feature(first)["cofiring"][0]["feature"]
    rest = [r["feature"] for r in index.features("density", descending=False, lo=1e-9, limit=5)]
    third = next(f for f in rest if f not in (first, partner))
    return [first, partner, third]


def _payload(text: str) -> dict:
    found = re.search(
        r'<script type="application/json" id="export-data">(.*?)</script>', text, re.S
    )
    assert found
    return json.loads(found.group(1))


def test_the_html_file_holds_everything_it_needs(index, chosen, indexed_glass, tmp_path):
    out = export_html(index, chosen, tmp_path / "features.html", run="glass")
    text = out.read_text()
    assert "default-src 'none'" in text  # the page's CSP forbids every request
    assert not re.search(r"""\s(src|href)\s*=""", text)  # no external script, style or link
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", text))
    assert urls <= {"http://www.w3.org/2000/svg"}  # the SVG namespace name, never fetched
    data = _payload(text)
    assert [f["id"] for f in data["features"]] == chosen
    for f in data["features"]:
        want = {**index.feature(f["id"]), "run": "glass", "sae": index.info["sae"]}
        assert f == json.loads(json.dumps(want))


def test_the_html_export_opens_offline_and_switches(index, chosen, tmp_path, page):
    out = export_html(index, chosen, tmp_path / "features.html", run="glass")
    requests: list[str] = []

    def refuse(route):  # anything but the file itself is refused
        requests.append(route.request.url)
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            route.abort()

    page.context.route("**/*", refuse)
    page.goto(out.as_uri())
    dash = page.locator(".sae-dash")
    assert dash.get_attribute("data-feature") == str(chosen[0])
    for fid in [*chosen[1:], chosen[0]]:  # switch with the list
        page.click(f"#export-list button[data-feature='{fid}']")
        assert dash.get_attribute("data-feature") == str(fid)
        feature = index.feature(fid)
        assert page.inner_text(".sae-dash .title") == f"Feature {fid}"
        assert page.locator(".sae-dash .ctx").count() >= len(feature["top"]) > 0
        first = page.locator(".sae-dash .ctx").first.inner_text()
        assert feature["top"][0]["tokens"][feature["top"][0]["at"]].strip() in first
        current = page.locator("#export-list button[aria-current='true']")
        assert current.get_attribute("data-feature") == str(fid)
    # a co-firing feature that is in the export opens; one that is not says so
    page.click(f".sae-dash .chip[data-feature='{chosen[1]}']")
    assert dash.get_attribute("data-feature") == str(chosen[1])
    outside = next(
        c["feature"]
        for c in index.feature(chosen[1])["neighbours"] + index.feature(chosen[1])["cofiring"]
        if c["feature"] not in chosen
    )
    page.locator(f".sae-dash .chip[data-feature='{outside}']").first.click()
    assert f"feature {outside} is not in this export" in page.inner_text("#export-note")
    assert dash.get_attribute("data-feature") == str(chosen[1])
    page.goto(out.as_uri() + f"#feature-{chosen[2]}")  # a link to one feature
    page.reload()
    assert page.locator(".sae-dash").get_attribute("data-feature") == str(chosen[2])
    assert page.js_errors == []
    assert {u.split("#")[0] for u in requests} == {out.as_uri()}


def _close(got: list[float], want: list[float]) -> bool:
    return len(got) == len(want) and all(abs(a - b) <= 6e-4 for a, b in zip(got, want, strict=True))


def test_neuronpedia_features_agree_with_the_index(index, chosen, indexed_glass, tmp_path):
    run = Run.open(indexed_glass)
    _, sae = run.sae()
    gamma, w_u = unembedding(run.model)
    folder = export_neuronpedia(
        index, tmp_path, chosen, decoder=sae.W_dec, unembed=(gamma, w_u), sae_set="glass"
    )
    batch = json.loads((folder / "batch-0.json").read_text())
    info = index.info
    assert folder.name == f"glassllm_glass_{info['hook']}_{info['d_sae']}"
    assert (batch["model_id"], batch["layer"], batch["sae_set"]) == ("glassllm", 2, "glass")
    assert [f["feature_index"] for f in batch["features"]] == chosen
    for got in batch["features"]:
        f = index.feature(got["feature_index"])
        assert math.isclose(got["frac_nonzero"], f["density"], abs_tol=1e-6)
        assert got["pos_str"] == [t["token"] for t in f["logits"]["top"]]
        assert _close(got["pos_values"], [t["value"] for t in f["logits"]["top"]])
        assert got["neg_str"] == [t["token"] for t in f["logits"]["bottom"]]
        assert _close(got["neg_values"], [t["value"] for t in f["logits"]["bottom"]])
        assert got["freq_hist_data_bar_heights"] == f["histogram"]["counts"]
        edges = f["histogram"]["edges"]
        centres = [(a + b) / 2 for a, b in pairwise(edges)]
        assert _close(got["freq_hist_data_bar_values"], centres)
        assert got["correlated_features_indices"] == [c["feature"] for c in f["cofiring"]]
        assert _close(got["correlated_features_l1"], [c["score"] for c in f["cofiring"]])
        assert got["correlated_features_pearson"] == []
        row = sae.W_dec[got["feature_index"]].detach()
        top = row.abs().topk(3).indices.tolist()
        assert got["neuron_alignment_indices"] == top
        assert _close(got["neuron_alignment_values"], row[top].tolist())
        assert _close(got["neuron_alignment_l1"], (row[top] / row.abs().sum()).tolist())
        # the logit histogram covers the vocabulary, from the index's bottom to its top logit
        heights, centres = got["logits_hist_data_bar_heights"], got["logits_hist_data_bar_values"]
        assert sum(heights) == w_u.shape[1] and len(centres) == len(heights) == 40
        half = (centres[1] - centres[0]) / 2
        assert math.isclose(centres[0] - half, f["logits"]["bottom"][0]["value"], abs_tol=2e-3)
        assert math.isclose(centres[-1] + half, f["logits"]["top"][0]["value"], abs_tol=2e-3)
        acts = got["activations"]
        examples = f["top"] + [e for iv in f["intervals"] for e in iv["examples"]]
        assert len(acts) == len(examples) > 0
        for a, e in zip(acts, examples, strict=True):
            assert a["tokens"] == e["tokens"] and _close(a["values"], e["acts"])
        for a in acts[: len(f["top"])]:
            assert (a["bin_min"], a["bin_contains"]) == (-1, -1)
            assert math.isclose(a["bin_max"], f["max_act"], abs_tol=6e-4)
        rest = acts[len(f["top"]) :]
        bins = [(iv["lo"], iv["hi"]) for iv in f["intervals"] for _ in iv["examples"]]
        for a, (lo, hi) in zip(rest, bins, strict=True):
            assert math.isclose(a["bin_min"], lo, abs_tol=6e-4)
            assert math.isclose(a["bin_max"], hi, abs_tol=6e-4)
            assert 0 <= a["bin_contains"] <= 1
    settings = json.loads((folder / "run_settings.json").read_text())
    assert settings["features"] == chosen and settings["n_prompts_total"] == info["examples"]
    assert not (folder / "skipped_indexes.json").exists()


@pytest.mark.slow
def test_neuronpedia_all_features_batches_and_skipped(index, tmp_path):
    d_sae = index.info["d_sae"]
    folder = export_neuronpedia(index, tmp_path, None, per_batch=700)
    batches = sorted(folder.glob("batch-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    ids = [f["feature_index"] for p in batches for f in json.loads(p.read_text())["features"]]
    assert all(len(json.loads(p.read_text())["features"]) <= 700 for p in batches)
    skipped = json.loads((folder / "skipped_indexes.json").read_text())["skipped_indexes"]
    assert sorted(ids + skipped) == list(range(d_sae))
    assert len(batches) == math.ceil(len(ids) / 700)
    dead = [r["feature"] for r in index.features("density", descending=False, hi=0.0, limit=1000)]
    assert sorted(skipped) == sorted(dead) and len(dead) < 1000
    assert all(index.feature(i)["fired"] == 0 for i in skipped[:20])


def test_bad_feature_ids_are_one_line_errors(index, tmp_path):
    d_sae = index.info["d_sae"]
    with pytest.raises(InputError, match=f"feature {d_sae} is out of range.*0 to {d_sae - 1}"):
        export_neuronpedia(index, tmp_path, [0, d_sae])
    with pytest.raises(InputError, match="feature -1 is out of range"):
        export_html(index, [-1], tmp_path / "x.html")
    with pytest.raises(InputError, match="no features chosen"):
        export_html(index, [], tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()


class MarkupIndex(FakeIndex):
    """The stand-in index, its examples' tokens holding markup that would end a script."""

    def feature(self, i: int) -> dict:
        f = super().feature(i)
        f["top"][0]["tokens"][0] = "</script><script>alert(1)</script>\u2028"
        return f


def test_tokens_that_look_like_markup_stay_data(tmp_path):
    idx = MarkupIndex()
    text = export_html(idx, [2, 3], tmp_path / "m.html", run="fake").read_text()
    assert text.count("<script") == 3  # the data, the renderer, the page's own script
    want = [{**idx.feature(i), "run": "fake", "sae": "fake"} for i in (2, 3)]
    assert _payload(text)["features"] == want

"""The Sparsity Explorer on a language-model run, as a person uses it in Chromium: pick the run
as the source, see the tokens x features heatmap, edit the text, click the brightest cell and
see that feature's top contexts with per-token highlighting, then open its dashboard. The
screenshot goes to docs/screenshots/sparsity_lm.png."""

import httpx
import pytest

from saescope.analysis import FeatureIndex
from saescope.explore import create_app
from tests.explore.browser import SCREENSHOTS, served

pytestmark = pytest.mark.slow  # Chromium, glassllm, and the session's indexed run
TEXT = "The Queen said to the King that the Queen was tired of the castle."
BRIGHTEST = (
    "rs => { const b = rs.reduce((b, r) => +r.dataset.act > +b.dataset.act ? r : b);"
    " return [+b.dataset.row, +b.dataset.col, +b.dataset.act, +b.dataset.feature]; }"
)


@pytest.fixture(scope="module")
def base(indexed_glass):
    with served(create_app([indexed_glass])) as url:
        yield url


def ready(page):
    page.wait_for_selector("#lm-view[data-ready=true] #lm-heatmap rect.cell")


def test_an_lm_runs_heatmap_and_a_bright_cells_top_contexts(base, page, indexed_glass):
    page.set_default_timeout(20_000)
    page.goto(f"{base}/static/sparsity.html")
    page.wait_for_selector("#source option[value*=glass]", state="attached")
    assert page.is_hidden("#lm-view") and page.is_visible("#seed-view")
    page.select_option("#source", index=1)  # the run, after the seed classifier
    ready(page)
    assert "source=lm" in page.url and "run=glass" in page.url and page.is_hidden("#seed-view")
    want = httpx.post(f"{base}/api/heatmap", json={"run": "glass", "text": TEXT}).json()
    cells = page.locator("#lm-heatmap rect.cell")
    assert len(want["features"]) == 32
    assert cells.count() == len(want["tokens"]) * len(want["features"])
    assert page.locator("#lm-heatmap text.tok.skipped").count() == 1  # position 0
    row, col, act, fid = page.eval_on_selector_all("#lm-heatmap rect.cell", BRIGHTEST)
    assert act == pytest.approx(want["max"]) and want["max"] > 0
    assert (fid, want["acts"][row][col]) == (want["features"][col]["feature"], want["max"])
    dark = page.locator("#lm-heatmap rect.cell[data-act='0']").first
    assert dark.get_attribute("fill") == "rgb(0,0,0)"  # dark = 0
    page.locator(f"#lm-heatmap rect.cell[data-row='{row}'][data-col='{col}']").click()
    page.wait_for_selector("#lm-contexts .ctx")
    with FeatureIndex.open(indexed_glass) as idx:
        top = idx.feature(fid)["top"]
    contexts = page.locator("#lm-contexts .ctx")
    assert top and contexts.count() == len(top)
    first = contexts.first.locator(".tok")
    assert first.count() == len(top[0]["tokens"])
    shaded = first.evaluate_all("ts => ts.filter(t => t.style.background.includes('rgba')).length")
    assert 0 < shaded <= sum(a > 0 for a in top[0]["acts"])  # per-token highlighting
    assert f"Feature #{fid} fires at" in page.inner_text("#lm-info-title")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "sparsity_lm.png"), full_page=True)
    page.click("#info-browser")
    page.wait_for_selector(f".sae-dash[data-feature='{fid}']")
    assert page.js_errors == []


def test_the_text_is_editable_and_the_seed_source_comes_back(base, page):
    page.set_default_timeout(20_000)
    page.goto(f"{base}/static/sparsity.html?source=lm&run=glass")
    ready(page)
    rows = page.locator("#lm-heatmap text.tok").count()
    page.fill("#lm-text", "A cat sat.")
    page.wait_for_function(f"document.querySelectorAll('#lm-heatmap text.tok').length !== {rows}")
    n = page.locator("#lm-heatmap text.tok").count()
    want = httpx.post(f"{base}/api/heatmap", json={"run": "glass", "text": "A cat sat."}).json()
    assert n == len(want["tokens"]) < rows
    page.fill("#lm-text", "")
    page.wait_for_selector("#lm-error:not([hidden])")
    assert "empty" in page.inner_text("#lm-error")
    page.select_option("#source", "seed")
    assert page.is_visible("#seed-view") and page.is_hidden("#lm-view")
    page.wait_for_selector("#error:not([hidden])")  # this app has no seed demo: it says so
    assert "saescope explore" in page.inner_text("#error")
    assert page.js_errors == []

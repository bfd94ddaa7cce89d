"""The seed's two demos as a person uses them, in Chromium: the Feature Disentangler's slider
changes both panels and the L0/MSE/purity numbers; a click on a bright cell of the Sparsity
Explorer's heatmap names the feature's class. Screenshots go to docs/screenshots/."""

import json
from dataclasses import replace

import pytest

from saescope.experiments import seed_demos
from saescope.explore import create_app
from tests.explore.browser import SCREENSHOTS, served
from tests.explore.common import random_run

CFG = replace(seed_demos.DemoConfig(), mono=replace(seed_demos.DemoConfig().mono, sae_steps=700))
"""The real slider's stops with fewer SAE steps (about 6 s): the screenshots show the trade-off."""


def make_app(demo, tmp):
    """The app of `saescope explore`, with the classifier SAE's run beside the demo file when
    its index was built, else a random run (the app needs one)."""
    run = demo.parent / seed_demos.CLASSIFIER_RUN
    return create_app([run if run.is_dir() else random_run(tmp / "run")], demo=demo)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    path = tmp_path_factory.mktemp("seed") / "seed_demos.json"
    return seed_demos.build(path, seed=0, cfg=CFG, progress=False)


@pytest.fixture(scope="module")
def base(demo, tmp_path_factory):
    with served(make_app(demo, tmp_path_factory.mktemp("app"))) as url:
        yield url


def _numbers(page):
    return {k: page.inner_text(f"#{k}") for k in ("l1", "l0", "mse", "purity", "alive")}


def _panel(page, sel):
    return page.eval_on_selector(sel, "svg => svg.innerHTML")


@pytest.mark.slow
def test_disentangler_slider_changes_both_panels(base, page):
    page.goto(f"{base}/static/disentangler.html")
    page.wait_for_selector("#features rect.cell")
    slider = page.locator("#slider")
    assert slider.is_enabled()
    n = int(slider.get_attribute("max")) + 1
    assert n == len(CFG.l1_coefs)
    assert page.locator("#neurons g.row").count() == CFG.mono.d_hidden
    start = int(slider.input_value())
    seen = []
    for i in range(n):
        slider.fill(str(i))  # sets the value and fires input, as a drag does
        seen.append((_numbers(page), _panel(page, "#neurons"), _panel(page, "#features")))
    assert [s[0]["l1"] for s in seen] == [f"{x:g}" for x in CFG.l1_coefs]
    l0 = [float(s[0]["l0"]) for s in seen]
    mse = [float(s[0]["mse"]) for s in seen]
    assert l0 == sorted(l0, reverse=True) and l0[0] > l0[-1]
    assert mse == sorted(mse) and mse[-1] > mse[0]
    assert float(seen[-1][0]["purity"]) > float(page.inner_text("#npurity"))
    assert len({s[0]["purity"] for s in seen}) == n
    assert len({s[1] for s in seen}) == n  # the neurons' panel follows the slider too
    assert len({s[2] for s in seen}) == n
    slider.fill(str(start))  # the page as it opens, for the README
    page.screenshot(path=str(SCREENSHOTS / "disentangler.png"), full_page=True)
    assert page.js_errors == []


@pytest.mark.slow
def test_sparsity_click_bright_cell_names_its_class(base, page, demo):
    data = json.loads(demo.read_text())
    page.goto(f"{base}/static/sparsity.html")
    page.wait_for_selector("#heatmap rect.cell")
    lvl = data["levels"][data["default"]]
    cells = page.locator("#heatmap rect.cell")
    assert cells.count() == len(data["inputs"]) * len(lvl["features"])
    # the brightest cell: the largest activation on the page
    row, col = page.eval_on_selector_all(
        "#heatmap rect.cell",
        "rs => { const b = rs.reduce((b, r) => +r.dataset.act > +b.dataset.act ? r : b);"
        " return [+b.dataset.row, +b.dataset.col]; }",
    )
    assert lvl["heatmap"]["acts"][row][col] == lvl["heatmap"]["max"] > 0
    page.locator(f"#heatmap rect.cell[data-col='{col}'][data-row='{row}']").click()
    feat = lvl["features"][col]
    assert page.inner_text("#info-class") == data["classes"][feat["class"]]
    assert f"f{feat['id']}" in page.inner_text("#info")
    assert "fires at" in page.inner_text("#info")
    page.screenshot(path=str(SCREENSHOTS / "sparsity.png"), full_page=True)
    # the slider switches SAEs: another heatmap and other numbers
    before = (page.inner_text("#l0"), cells.count())
    page.locator("#slider").fill("0")
    page.wait_for_function(f"document.getElementById('l0').textContent !== '{before[0]}'")
    assert page.locator("#heatmap rect.cell").count() == len(data["inputs"]) * len(
        data["levels"][0]["features"]
    )
    assert page.js_errors == []


@pytest.mark.slow
def test_sparsity_links_a_feature_to_its_dashboard(base, page, demo):
    """With the feature index and the web app there, a clicked feature opens in the feature
    browser, whose dashboard shows the class it fires on."""
    data = json.loads(demo.read_text())
    assert data["index_run"]  # the classifier SAE's run, indexed
    page.goto(f"{base}/static/sparsity.html")
    page.wait_for_function("window.saescope && window.saescope.runs")
    page.wait_for_selector("#heatmap rect.cell")
    lvl = data["levels"][data["default"]]
    col = max(range(len(lvl["features"])), key=lambda j: lvl["features"][j]["purity"])
    feat = lvl["features"][col]
    page.locator(f"#heatmap rect.cell[data-col='{col}']").first.click()
    page.click("#info-browser")
    page.wait_for_url(f"**/index.html?run={data['index_run']}&feature={feat['id']}")
    page.wait_for_selector(f"text={data['classes'][feat['class']]}")
    assert page.js_errors == []


@pytest.mark.slow
def test_pages_say_how_to_make_missing_data(tmp_path, page):
    with served(make_app(tmp_path / "missing.json", tmp_path)) as url:
        for name in ("disentangler", "sparsity"):
            page.goto(f"{url}/static/{name}.html")
            page.wait_for_selector("#error:not([hidden])")
            assert "saescope explore" in page.inner_text("#error")
    assert page.js_errors == []

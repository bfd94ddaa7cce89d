"""The pages as a person uses them, in Chromium: search a token, open a dashboard and click a
neighbour; type a prompt and see its tokens highlighted, open a feature from it; steer and see
both continuations. Nothing is fetched from outside the server; the pages throw no error.
Screenshots go to docs/screenshots/ (the README shows them)."""

import pytest

from saescope.analysis import FeatureIndex
from saescope.explore import create_app
from tests.explore.browser import SCREENSHOTS, served

pytestmark = pytest.mark.slow  # Chromium, glassllm, and the session's indexed run
PAGES = {"index.html": "Feature browser", "prompt.html": "Prompt view", "steer.html": "Steering"}
TIMEOUT = 20_000  # ms


@pytest.fixture(scope="module")
def base(indexed_glass):
    with served(create_app([indexed_glass, indexed_glass])) as url:
        yield url


@pytest.fixture(scope="module")
def busy(indexed_glass):
    """The densest feature's page, as the index has it."""
    with FeatureIndex.open(indexed_glass) as idx:
        return idx.feature(idx.features(limit=1)[0]["feature"])


@pytest.fixture
def offline(page, base):
    """The page, with every request outside the server refused and listed."""
    outside: list[str] = []

    def only_local(route):
        if route.request.url.startswith(base):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.set_default_timeout(TIMEOUT)
    page.outside = outside
    return page


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def clean(page) -> None:
    assert page.js_errors == [] and page.outside == []


def test_every_page_loads_with_the_nav_and_the_run_picker(offline, base):
    for file, heading in PAGES.items():
        offline.goto(f"{base}/static/{file}")
        assert heading in offline.locator("h1").inner_text()
        offline.wait_for_selector("body[data-ready]")
        names = offline.locator("#run-picker option").all_inner_texts()
        assert names == ["glass", "glass-2"]
        links = offline.locator("header.nav a").evaluate_all("as => as.map(a => a.dataset.page)")
        assert links == [*PAGES, "disentangler.html", "sparsity.html"]
        offline.select_option("#run-picker", index=1)
        href = offline.locator("header.nav a[data-page='prompt.html']").get_attribute("href")
        assert "run=glass-2" in href
    clean(offline)


def test_search_a_token_open_a_dashboard_and_click_a_neighbour(offline, base, busy):
    ex = busy["top"][0]
    offline.goto(f"{base}/static/index.html")
    offline.wait_for_selector("body[data-ready]")
    offline.select_option("#by", "token")
    offline.fill("#query", ex["tokens"][ex["at"]])
    offline.click("button[type=submit]")
    row = offline.locator(f"#results tr[data-feature='{busy['id']}']")
    row.click()
    dash = offline.locator(f".sae-dash[data-feature='{busy['id']}']")
    dash.wait_for()
    assert f"Feature {busy['id']}" in dash.locator(".title").inner_text()
    assert dash.locator("svg.histogram rect.bar").count() == len(busy["histogram"]["counts"])
    lit = dash.locator(".ctx .tok.peak").first
    assert lit.evaluate("e => getComputedStyle(e).backgroundColor") != "rgba(0, 0, 0, 0)"
    assert f"{ex['max']:.3f}"[:4] in lit.get_attribute("title")
    assert dash.locator(".ctx").count() >= len(busy["top"])
    assert dash.locator(".logit.pos").count() == len(busy["logits"]["top"])
    shot(offline, "dashboard.png")
    near = busy["neighbours"][0]["feature"]
    dash.locator(f"section:has-text('Nearest') .chip[data-feature='{near}']").click()
    offline.locator(f".sae-dash[data-feature='{near}']").wait_for()
    assert f"feature={near}" in offline.url
    offline.go_back()
    offline.locator(f".sae-dash[data-feature='{busy['id']}']").wait_for()
    clean(offline)


def test_a_bad_id_shows_the_servers_message(offline, base):
    offline.goto(f"{base}/static/index.html?feature=99999")
    offline.wait_for_function("document.getElementById('error').textContent.length > 0")
    assert "no feature 99999" in offline.locator("#error").inner_text()
    offline.fill("#query", "abc")
    offline.click("button[type=submit]")
    offline.wait_for_function("document.getElementById('error').textContent.includes('integer')")
    clean(offline)


def test_browse_by_density(offline, base):
    offline.goto(f"{base}/static/index.html")
    offline.wait_for_selector("body[data-ready]")
    offline.click("#browse")
    offline.locator("#results tr.pick").first.wait_for()
    assert offline.locator("#results tr.pick").count() == 50
    clean(offline)


def test_a_prompt_highlights_its_tokens_and_opens_a_feature(offline, base):
    offline.goto(f"{base}/static/prompt.html")
    text = "The Queen said to the King that the Queen was tired"
    offline.fill("#text", text)
    offline.click("#go")
    offline.wait_for_function(
        "t => [...document.querySelectorAll('#tokens .tok')].map(e => e.textContent).join('')"
        " === t",
        arg=text,
    )
    tokens = offline.locator("#tokens .tok")
    shades = tokens.evaluate_all("ts => ts.map(t => getComputedStyle(t).backgroundColor)")
    assert shades[0] == "rgba(0, 0, 0, 0)"  # position 0: not encoded
    assert sum(s != "rgba(0, 0, 0, 0)" for s in shades[1:]) >= len(shades) // 2
    tokens.nth(2).click()
    chip = offline.locator("#token-features .chip").first
    feature = chip.get_attribute("data-feature")
    shot(offline, "prompt.png")
    chip.click()
    offline.locator(f".sae-dash[data-feature='{feature}']").wait_for()
    offline.fill("#text", "")
    offline.click("#go")
    offline.wait_for_function("document.getElementById('error').textContent.includes('empty')")
    clean(offline)


def test_steering_shows_both_continuations(offline, base, busy):
    offline.goto(f"{base}/static/index.html?feature={busy['id']}")
    offline.click("#steer-link a")  # from the feature's dashboard
    offline.wait_for_selector("body[data-ready]")
    assert offline.input_value(".fid") == str(busy["id"])
    offline.fill(".fval", "60")
    offline.fill("#prompt", "The King said")
    offline.fill("#new", "12")
    offline.click("#go")
    offline.wait_for_function("document.getElementById('steered').textContent.length > 0")
    plain = offline.locator("#unsteered").inner_text()
    steered = offline.locator("#steered").inner_text()
    assert plain and steered and plain != steered
    assert offline.locator("#effects tr").count() > 1
    shot(offline, "steer.png")
    offline.fill(".fval", "")
    offline.click("#go")
    offline.wait_for_function("document.getElementById('error').textContent.includes('finite')")
    offline.fill(".fval", "5")
    offline.fill(".fid", "5000")
    offline.click("#go")
    offline.wait_for_function("document.getElementById('error').textContent.includes('range')")
    clean(offline)

"""static/dashboard.js on its own, as the offline export uses it: a page with no server, the
script and its CSS inline, `renderFeature` fed a feature's JSON; clicks reach the callback,
token text is text (never HTML), every value shows."""

import json

from saescope.explore.app import STATIC
from tests.explore.common import FakeIndex


def render(page, feature: dict) -> None:
    js = (STATIC / "dashboard.js").read_text()
    css = (STATIC / "dashboard.css").read_text()
    page.route("**/*", lambda route: route.abort())  # no network at all
    page.set_content(
        f"<style>{css}</style><div id=d></div><script>{js}</script>"
        "<script>window.clicked = [];"
        f"renderFeature(document.getElementById('d'), {json.dumps(feature)},"
        " {onFeature: (id) => window.clicked.push(id)});</script>"
    )


def test_it_draws_every_part_and_clicks_reach_the_callback(page):
    f = FakeIndex(8).feature(5)
    render(page, f)
    dash = page.locator(".sae-dash[data-feature='5']")
    assert "Feature 5" in dash.locator(".title").inner_text()
    assert dash.locator("svg.histogram rect.bar").count() == len(f["histogram"]["counts"])
    n_examples = len(f["top"]) + sum(len(iv["examples"]) for iv in f["intervals"])
    assert dash.locator(".ctx").count() == n_examples
    tokens = dash.locator(".ctx").first.locator(".tok")
    assert tokens.all_inner_texts() == f["top"][0]["tokens"]  # "<b>" stays text
    assert dash.locator(".ctx b").count() == 0
    peak = tokens.nth(f["top"][0]["at"])
    assert "peak" in peak.get_attribute("class")
    assert peak.get_attribute("title") == '" Queen": 5.000'
    shades = tokens.evaluate_all("ts => ts.map(t => getComputedStyle(t).backgroundColor)")
    assert [s != "rgba(0, 0, 0, 0)" for s in shades] == [a > 0 for a in f["top"][0]["acts"]]
    assert dash.locator(".logit.pos span").all_inner_texts() == ['" Queen"', "1.50"]
    dash.locator(".chip[data-feature='6']").click()  # co-firing
    dash.locator(".chip[data-feature='7']").click()  # neighbour
    assert page.evaluate("window.clicked") == [6, 7]
    assert page.js_errors == []


def test_a_feature_that_never_fired_and_has_no_logits(page):
    f = {**FakeIndex(8).feature(0), "top": [], "intervals": [], "logits": None}
    f.update(cofiring=[], neighbours=[], histogram={"edges": [], "counts": []})
    render(page, f)
    text = page.locator(".sae-dash").inner_text()
    assert "never fired" in text and "no logits" in text
    assert page.js_errors == []

import shutil

import pytest
from playwright.sync_api import sync_playwright

from tests.explore.browser import launch

INDEX_TOKENS = 8192
"""Tokens the test index covers (a few seconds to build)."""


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session's browser tests (per xdist worker)."""
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.js_errors = errors  # tests assert the page threw nothing
    yield page
    context.close()


@pytest.fixture(scope="session")
def indexed_glass(glass_sae, tmp_path_factory):
    """A copy of the `glass_sae` run (TopK 2048/16 on glassllm) indexed by saescope.analysis
    over a few thousand tokens, once per session (per xdist worker)."""
    from saescope.analysis import IndexConfig, index_run
    from saescope.runs import Run

    out = tmp_path_factory.mktemp("indexed") / "glass"
    shutil.copytree(glass_sae, out, ignore=shutil.ignore_patterns("checkpoint*", "*.lock"))
    index_run(Run.open(out), cfg=IndexConfig(tokens=INDEX_TOKENS), progress=False)
    return out

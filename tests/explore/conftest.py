import pytest
from playwright.sync_api import sync_playwright

from tests.explore.browser import launch

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

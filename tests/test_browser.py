"""The web page in a real browser: headless Chromium (Debian's) driven by Playwright.

Skipped, with the reason, where Playwright or Chromium is missing. Screenshots go to
$BERTFIT_ARTIFACTS (default: the test's tmp_path).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

# The helpers and run-directory fixtures are shared with the HTTP tests.
from test_serve import ODD_LABELS, Server, odd_run_dir, run_dir  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("BERTFIT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; never `playwright install` here)")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set BERTFIT_CHROMIUM)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture()
def artifacts(tmp_path) -> Path:
    directory = Path(os.environ.get("BERTFIT_ARTIFACTS") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def open_page(browser, url: str):
    """A page that may reach only the server: anything else is blocked and recorded."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    outside, problems = [], []

    def guard(route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(url)
    return page, outside, problems


def test_type_a_text_and_see_its_label(browser, run_dir, tmp_path, artifacts):
    srv = Server(run_dir, tmp_path / "browser.log")
    try:
        srv.wait("/ready")
        page, outside, problems = open_page(browser, srv.url + "/")
        page.wait_for_selector("#status[data-state='ready']")
        assert page.text_content("#model-name") == "sentiment"
        # The model card and its test metrics, from the run's metrics.json.
        page.wait_for_selector(".stat")
        assert "81.2%" in page.text_content("#metrics")
        assert page.locator("#metrics tbody tr").count() == 3

        page.fill("#texts", "I absolutely loved this film, the acting was superb!\n"
                            "The delivery was late and the box was damaged.")
        page.click("#classify")
        page.wait_for_selector(".result")
        results = page.locator(".result")
        assert results.count() == 2
        label = results.first.locator(".badge .label").text_content()
        assert label in ("negative", "neutral", "positive")
        assert results.first.locator(".bar-label").all_text_contents() == ["negative", "neutral", "positive"]
        page.wait_for_timeout(500)  # let the bars finish their transition for the screenshot
        page.screenshot(path=str(artifacts / "serve-page.png"), full_page=True)

        page.fill("#texts", "")
        page.click("#classify")
        assert "at least one text" in page.text_content("#error")
        assert not outside, f"the page tried to reach the internet: {outside}"
        assert not problems, problems

        # The API docs render with no internet (their assets come from the package, not a CDN).
        docs, outside, problems = open_page(browser, srv.url + "/docs")
        docs.wait_for_selector(".opblock-summary-path[data-path='/predict']")
        assert docs.locator(".opblock").count() >= 5  # /predict, /health, /ready, /info, /metrics
        docs.screenshot(path=str(artifacts / "serve-docs.png"), full_page=True)
        assert not outside, f"/docs tried to reach the internet: {outside}"
        assert not problems, problems
    finally:
        srv.stop()


def test_labels_and_texts_are_escaped(browser, odd_run_dir, tmp_path, artifacts):
    srv = Server(odd_run_dir, tmp_path / "browser-odd.log")
    try:
        srv.wait("/ready")
        page, outside, problems = open_page(browser, srv.url + "/")
        page.wait_for_selector("#status[data-state='ready']")
        assert "No metrics recorded" in page.text_content("#metrics")
        hostile = '<img src=x onerror="window.__xss=2"><script>window.__xss=3</script>'
        page.fill("#texts", hostile)
        page.keyboard.press("Control+Enter")
        page.wait_for_selector(".result")
        assert page.text_content(".result-text") == hostile
        assert page.locator(".result").first.locator(".bar-label").all_text_contents() == ODD_LABELS
        assert page.locator(".chip").all_text_contents() == ODD_LABELS
        assert page.locator(".result img, #facts img").count() == 0
        assert page.evaluate("window.__xss") is None
        page.screenshot(path=str(artifacts / "serve-page-odd-labels.png"), full_page=True)
        assert not outside, f"the page tried to reach the internet: {outside}"
        assert not problems, problems
    finally:
        srv.stop()

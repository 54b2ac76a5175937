"""From the Summary to a recovered model and its report, in headless Chromium: a dashboard on the tiny model whose
store holds a finished sweep (the Summary recommends Wanda at 50 %); a click on "Recover quality with an adapter"
opens the Recovery page with that setting, a short training runs as a real background job, and the page shows the
before/after table, the exact merged sparsity, the loss chart drawn by plotly.js and a report download whose HTML
names the recovered setting.

It starts its own server on the tiny model with its own store (`conftest.tiny_model_server`).
"""

from __future__ import annotations

import pytest

from tests.browser.conftest import tiny_model_server

pytestmark = pytest.mark.browser

_LOSS_CHART = """
() => Array.from(document.querySelectorAll('.js-plotly-plot')).some(gd =>
  gd.layout && gd.layout.title && gd.layout.title.text === 'Training loss against step' &&
  (gd.data || []).some(t => (t.y || []).length > 0) && gd.querySelectorAll('.scatterlayer path').length > 0)
"""


@pytest.fixture(scope="module")
def recovery_app(artifacts, tmp_path_factory):
    """The url of a dashboard on the tiny model whose store holds one finished sweep."""
    from tests.app.apptest_helpers import stored_sweep

    # Wanda usable at 50 % on wiki: the Summary's recommendation
    with tiny_model_server(tmp_path_factory.mktemp("recovery-home"), artifacts / "streamlit-recovery-server.log",
                           stored_sweep) as (url, _):
        yield url


def test_from_the_summary_to_a_recovered_model_and_its_report(browser, recovery_app, artifacts, wait_for_app):
    context = browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    page = context.new_page()
    try:
        page.goto(f"{recovery_app}/summary", wait_until="domcontentloaded")
        wait_for_app(page, "Recover quality with an adapter", timeout_ms=120_000)
        page.get_by_role("button", name="Recover quality with an adapter").click()
        wait_for_app(page, "Preselected from the Summary", timeout_ms=60_000)
        assert "/recovery" in page.url and "Traceback" not in page.inner_text("body")
        # A short training: a few steps (the tiny model learns nothing more from a longer one).
        steps = page.get_by_role("spinbutton", name="Steps", exact=True)
        steps.fill("6")
        steps.press("Enter")
        wait_for_app(page, "6 steps ×", timeout_ms=30_000)  # the estimate follows the edited form
        page.get_by_role("button", name="Recover", exact=True).click()
        wait_for_app(page, "gap won back", timeout_ms=240_000)  # a real background job, then the result
        # The sparsity sentence comes after the table and the two charts: wait for the report button, rendered
        # after it, before reading the page (reading right after the table was a race, seen once in a CI run).
        wait_for_app(page, "Download the report (HTML)", timeout_ms=60_000)
        body = page.inner_text("body")
        assert "Traceback" not in body and "6 steps" in body
        assert "exactly 50.0 % before and after merging" in body
        page.wait_for_function(_LOSS_CHART, timeout=60_000)
        with page.expect_download(timeout=60_000) as download:
            page.get_by_role("button", name="Download the report (HTML)").click()
        html = open(download.value.path(), encoding="utf-8").read()
        (artifacts / "recovery-report.html").write_text(html, encoding="utf-8")
        assert "Recovery" in html and "wanda" in html.lower() and "gap won back" in html
        page.set_viewport_size({"width": 1440, "height": 2600})  # Streamlit scrolls inside its own container
        page.wait_for_timeout(1200)
        page.screenshot(path=str(artifacts / "recovery.png"), full_page=True)
    finally:
        context.close()

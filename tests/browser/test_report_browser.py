"""The HTML report opens in a real Chromium with every network request blocked, and Plotly draws its charts;
the PDF is printed by headless Chromium."""

from __future__ import annotations

import pytest

from tests.unit.outputs.test_report import EVIL, sample_data

from pruning_core.export.report import export_report
from pruning_core.outputs.pdf import find_chromium
from pruning_core.outputs.report import build_report

pytestmark = pytest.mark.browser


def test_report_renders_offline_with_charts(browser, tmp_path):
    paths = build_report(export_report(sample_data(model_name=EVIL, prompt=EVIL)), tmp_path)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    blocked: list[str] = []

    def route(route):
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", route)
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(paths["html"].as_uri())
        page.wait_for_selector("body[data-charts='2']", timeout=30_000)
        page.wait_for_function("document.querySelectorAll('.chart .main-svg').length >= 2", timeout=30_000)
        assert page.locator("#curves-0 .scatterlayer .trace").count() >= 2  # dense line + wanda curve
        assert page.locator("#heatmap-1 .hm, #heatmap-1 image").count() >= 1
        assert EVIL in page.locator("h1").inner_text()  # shown as text, not run
        assert not dialogs, dialogs
        assert not errors, errors
        assert blocked == []  # the page asked for nothing outside its own file
    finally:
        context.close()


def test_pdf_is_printed(tmp_path):
    if find_chromium() is None:
        pytest.skip("Chromium not installed")
    paths = build_report(export_report(sample_data()), tmp_path, formats=("html",), pdf=True)
    data = paths["pdf"].read_bytes()
    assert data.startswith(b"%PDF") and len(data) > 10_000

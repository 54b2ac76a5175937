"""The frontier in headless Chromium: a dashboard on the tiny model whose store holds a finished frontier (and a
sweep); the Summary leads with the frontier's one sentence and draws its chart with plotly.js (a marker per
family, the Pareto front), and the Frontier page shows the same sentence, the chart (no text cut or printed over
other text) and the table.

It starts its own server on the tiny model with its own store (`conftest.tiny_model_server`).
"""

from __future__ import annotations

import pytest

from tests.browser.chart_layout import LAYOUT_PROBLEMS_JS
from tests.browser.conftest import tiny_model_server

pytestmark = pytest.mark.browser

SENTENCE = ("Stored as compressed-tensors 4-bit (loaded by transformers, vLLM), this model weighs 79.0 MB instead "
            "of 269.1 MB, at +6.0 % perplexity on wiki, with GPTQ 4-bit, groups of 64, symmetric: the smallest file "
            "within +10 %.")

_FRONTIER_CHART = """
() => Array.from(document.querySelectorAll('.js-plotly-plot')).some(gd =>
  gd.layout && gd.layout.title && (gd.layout.title.text || '').startsWith('Size on disk against perplexity') &&
  gd.layout.xaxis.type === 'log' && gd.layout.yaxis.type === 'log' &&
  (gd.data || []).some(t => t.meta && t.meta.role === 'front' && t.x.length >= 2) &&
  (gd.data || []).filter(t => t.meta && t.meta.role === 'family').length >= 4 &&
  gd.querySelectorAll('.scatterlayer path.point').length >= 7)
"""


def _prepare():
    from app.state import default_settings
    from tests.app.apptest_helpers import stored_frontier

    return stored_frontier(default_settings())  # the dashboard's default protocol: its frontier is shown


@pytest.fixture(scope="module")
def frontier_app(artifacts, tmp_path_factory):
    with tiny_model_server(tmp_path_factory.mktemp("frontier-home"), artifacts / "streamlit-frontier-server.log",
                           _prepare) as (url, _):
        yield url


def test_the_summary_leads_with_the_frontier_sentence_and_chart(browser, frontier_app, artifacts, wait_for_app):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{frontier_app}/summary", wait_until="domcontentloaded")
        wait_for_app(page, "this model weighs 79.0 MB", timeout_ms=120_000)
        body = page.inner_text("body")
        assert SENTENCE in body and "Traceback" not in body
        assert body.index("Recommended: GPTQ 4-bit, groups of 64, symmetric") < body.index(SENTENCE)
        page.wait_for_function(_FRONTIER_CHART, timeout=60_000)
        page.screenshot(path=str(artifacts / "summary-frontier.png"), full_page=True)
    finally:
        context.close()


def test_the_frontier_page_shows_the_answer_chart_and_table(browser, frontier_app, artifacts, wait_for_app):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{frontier_app}/frontier", wait_until="domcontentloaded")
        wait_for_app(page, "this model weighs 79.0 MB", timeout_ms=120_000)
        wait_for_app(page, "Quantize one setting", timeout_ms=60_000)  # the page's last section: all drawn
        body = page.inner_text("body")
        assert SENTENCE in body and "Traceback" not in body
        assert "7 points" in body and "Measure the frontier" in body
        page.wait_for_function(_FRONTIER_CHART, timeout=60_000)
        page.wait_for_timeout(1000)  # plotly lays out the text after the first draw
        assert page.evaluate(LAYOUT_PROBLEMS_JS) == []  # no title, tick or legend cut or printed over another
        page.screenshot(path=str(artifacts / "frontier-page.png"), full_page=True)
    finally:
        context.close()

"""The Continual page in headless Chromium: with a finished continual run of the tiny model in the store (a real
`run_continual`, inserted as the dashboard's job), the page opens on it, states which strategy forgets least and
the BWT convention, and draws the R matrix as a heatmap with data (read from plotly.js's graph div); opening
another strategy's tab draws its R matrix too.

It starts its own server on the tiny model with its own store (`conftest.tiny_model_server`).
"""

from __future__ import annotations

import pytest

from tests.browser.conftest import tiny_model_server

pytestmark = pytest.mark.browser

_R_HEATMAP = """
(strategy) => Array.from(document.querySelectorAll('.js-plotly-plot')).some(gd =>
  (gd.data || []).some(t => t.type === 'heatmap' && t.meta && t.meta.strategy === strategy &&
    (t.z || []).flat().some(v => v !== null)) &&
  gd.querySelectorAll('.heatmaplayer image, .heatmaplayer .hm').length > 0 &&
  gd.getBoundingClientRect().width > 0)
"""


@pytest.fixture(scope="module")
def continual_app(artifacts, tmp_path_factory):
    """(url, result): a dashboard on the tiny model whose store holds one finished continual job."""

    def finished_run() -> dict:
        from pruning_core.continual.run import ContinualSpec, run_continual
        from pruning_core.store import Store
        from pruning_core.protocol import Protocol
        from tests.app.apptest_helpers import insert_job

        spec = ContinualSpec(model="tiny-llama", protocol=Protocol(nsamples=4, seqlen=32, eval_windows=4),
                             domains=("news", "pydocs"), strategies=("latest", "copal", "joint"))
        result = run_continual(spec, store=Store())
        insert_job("continual", result["spec"], "done", result)
        return result

    with tiny_model_server(tmp_path_factory.mktemp("continual-home"),
                           artifacts / "streamlit-continual-server.log", finished_run) as served:
        yield served


def test_the_continual_page_opens_its_r_matrix(browser, continual_app, artifacts, wait_for_app):
    url, result = continual_app
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{url}/continual", wait_until="domcontentloaded")
        wait_for_app(page, "forgets least", timeout_ms=120_000)
        wait_for_app(page, "positive = forgetting")  # each sentence renders in turn: wait, do not read once
        assert "Traceback" not in page.inner_text("body")
        page.wait_for_function(_R_HEATMAP, arg="latest", timeout=60_000)  # the first tab is open
        page.get_by_role("tab", name="copal").click()
        page.wait_for_function(_R_HEATMAP, arg="copal", timeout=30_000)
        drawn = page.evaluate("""() => Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap(gd =>
            (gd.data || []).filter(t => t.type === 'heatmap' && t.meta && t.meta.strategy === 'copal')
              .map(t => t.z))""")
        assert drawn and [[round(v, 6) for v in row] for row in drawn[0]] == \
            [[round(v, 6) for v in row] for row in result["strategies"]["copal"]["R"]]
        page.set_viewport_size({"width": 1440, "height": 2600})  # Streamlit scrolls inside its own container
        page.wait_for_timeout(1200)  # plotly resizes to the new viewport
        page.screenshot(path=str(artifacts / "continual.png"), full_page=True)
    finally:
        context.close()


def test_the_continual_report_draws_its_charts_offline(browser, continual_app, tmp_path):
    from pruning_core.continual.export import continual_report_data
    from pruning_core.outputs.report import build_report

    _, result = continual_app
    paths = build_report(continual_report_data(result), tmp_path)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(paths["html"].as_uri())
        charts = len(result["strategies"]) + 2  # an R heatmap per strategy, the bars, the overlap
        page.wait_for_selector(f"body[data-charts='{charts}']", timeout=30_000)
        page.wait_for_function(f"document.querySelectorAll('.chart .main-svg').length >= {charts}", timeout=30_000)
        assert page.locator("[id^='continual-r-'] .heatmaplayer image, [id^='continual-r-'] .hm").count() >= 1
        assert "Continual pruning" in page.inner_text("h2#continual") and not errors, errors
    finally:
        context.close()

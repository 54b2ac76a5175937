"""The pages' layout in headless Chromium, measured in the DOM (no screenshot to judge), for the defects a new user
met (issue 26, journey point 8):

* the Structured and Sensitivity pages draw charts whose titles, axis titles, tick labels, colour-bar titles and
  legends are neither cut at the chart's edge nor printed over each other (`chart_layout.LAYOUT_PROBLEMS_JS`);
* a multiselect with more values than fit on one line shows every value: Streamlit scrolled them on one line and
  cut the first one off;
* the What-if plan table's toolbar (shown on hover, above the table) is not drawn over the "Start from" box.

It starts its own server on the tiny model, whose store holds a finished structured run (real, speed measured) and
a finished sensitivity map with negative cells.
"""

from __future__ import annotations

import pytest

from tests.browser.chart_layout import LAYOUT_PROBLEMS_JS
from tests.browser.conftest import tiny_model_server

pytestmark = pytest.mark.browser

_TAGS_OUTSIDE_THEIR_FIELD = """
() => Array.from(document.querySelectorAll('[data-testid="stMultiSelect"]')).flatMap(widget => {
  const field = widget.querySelector('.react-aria-ComboBox [role="group"]');
  if (!field) return [];
  const edge = field.getBoundingClientRect();
  return Array.from(widget.querySelectorAll('.react-aria-ComboBox [data-tag]')).filter(tag => {
    const box = tag.getBoundingClientRect();
    return box.left < edge.left - 1 || box.right > edge.right + 1 || box.top < edge.top - 1 ||
      box.bottom > edge.bottom + 1;
  }).map(tag => `${widget.querySelector('label').innerText}: ${tag.innerText}`);
})
"""

_TOOLBAR_OVER_A_SELECT_BOX = """
() => {
  const cross = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
  const toolbars = Array.from(document.querySelectorAll('[data-testid="stElementToolbar"]'))
    .map(t => t.getBoundingClientRect()).filter(b => b.width > 0);
  const boxes = Array.from(document.querySelectorAll('[data-testid="stSelectbox"]'));
  return {toolbars: toolbars.length, under: boxes.filter(s => toolbars.some(t => cross(t, s.getBoundingClientRect())))
    .map(s => s.innerText.split(String.fromCharCode(10))[0])};
}
"""


@pytest.fixture(scope="module")
def layout_app(artifacts, tmp_path_factory):
    """The url of a dashboard on the tiny model with a finished structured run and sensitivity map in its store."""

    def finished_runs() -> None:
        from app.services import sensitivity
        from app.services.structured import structured_spec
        from pruning_core.store import Store
        from pruning_core.structured.run import run_structured
        from tests.app.apptest_helpers import SMALL, fake_map, insert_job

        spec = structured_spec(SMALL, ["heads", "channels"], [0.2, 0.3], speed=True, prompt="The history of")
        result = run_structured(spec, store=Store())
        insert_job("structured", result["spec"], "done", result)
        negative = fake_map("exact")  # two layers, some cells below 0: the colour bar's title says so
        negative["values"] = [[v - 2.0 for v in row] for row in negative["values"]]
        insert_job("sensitivity", sensitivity.sensitivity_spec(SMALL, "wanda", [0.5], ["exact"], 8), "done",
                   {"maps": [negative], "correlations": []})

    with tiny_model_server(tmp_path_factory.mktemp("layout-home"), artifacts / "streamlit-layout-server.log",
                           finished_runs) as (url, _):
        yield url


@pytest.fixture()
def tall_page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.mark.parametrize("path,charts", [("structured", 3), ("sensitivity", 2)])
def test_charts_cut_no_text_and_print_no_legend_over_an_axis(tall_page, layout_app, wait_for_app, path, charts):
    tall_page.goto(f"{layout_app}/{path}", wait_until="domcontentloaded")
    wait_for_app(tall_page, "Finished", timeout_ms=120_000)
    tall_page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {charts}",
                                timeout=60_000)
    tall_page.wait_for_timeout(1000)  # plotly lays out the text after the first draw
    assert "Traceback" not in tall_page.inner_text("body")
    assert tall_page.evaluate(LAYOUT_PROBLEMS_JS) == []


def test_a_multiselect_shows_every_chosen_value(tall_page, layout_app, wait_for_app):
    tall_page.goto(f"{layout_app}/curves", wait_until="domcontentloaded")
    wait_for_app(tall_page, "Methods", timeout_ms=60_000)
    for name in ("Methods", "Sparsities (unstructured)"):
        for _ in range(12):  # choose every value it offers: more than fit on one line of the field
            tall_page.get_by_role("combobox", name=name).click()
            tall_page.wait_for_timeout(300)
            options = tall_page.get_by_role("option")
            if options.count() == 0:
                break
            options.first.click()
            tall_page.wait_for_timeout(500)
        tall_page.keyboard.press("Escape")
    tall_page.mouse.click(5, 5)  # close the last list
    wait_for_app(tall_page, "Methods")
    shown = tall_page.evaluate("""() => Array.from(document.querySelectorAll(
        '[data-testid="stMultiSelect"] .react-aria-ComboBox [data-tag]')).map(t => t.innerText)""")
    assert {"magnitude", "wanda", "sparsegpt"} <= set(shown) and len([t for t in shown if t.endswith("%")]) >= 6
    assert tall_page.evaluate(_TAGS_OUTSIDE_THEIR_FIELD) == []


def test_the_plan_tables_toolbar_is_not_drawn_over_the_start_from_box(tall_page, layout_app, wait_for_app):
    tall_page.goto(f"{layout_app}/what-if", wait_until="domcontentloaded")
    wait_for_app(tall_page, "Set sparsity per layer", timeout_ms=60_000)
    tall_page.get_by_text("Set sparsity per layer and module").click()
    wait_for_app(tall_page, "Start from", timeout_ms=60_000)
    table = tall_page.locator('[data-testid="stDataFrame"]').first
    table.wait_for(state="visible", timeout=60_000)
    table.hover()  # the toolbar shows on hover
    tall_page.wait_for_timeout(800)
    found = tall_page.evaluate(_TOOLBAR_OVER_A_SELECT_BOX)
    assert found["toolbars"] >= 1 and found["under"] == [], found

"""The dashboard's charts drawn by plotly.js in headless Chromium, at the widths the pages give them, measured for
text cut at the chart's edge and text printed over other text (`chart_layout.LAYOUT_PROBLEMS_JS`).

A user met these in the browser (issue 26, journey point 8): the Structured page's titles cut ("Perplexity on
news against parameters remov"), its axis titles printed over the legends, its layer labels cut to "layer" and
unreadable counts in the bars; a clipped axis title on the Sensitivity page. The Recovery page's perplexity chart
had the same legend over its axis title, and the Continual page's bars cut their last label. The specs here are the ones the pages
draw (`pruning_core.structured.figures`, `pruning_core.outputs.figures`) for a 30-layer model, drawn by the
plotly.js that the plotly package ships (Streamlit bundles the same major version), offline, without a server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.browser.chart_layout import LAYOUT_PROBLEMS_JS
from tests.unit.continual.test_continual_figures import hand_made
from tests.unit.structured.test_structured_figures import DENSE_WIDTHS, structured_result, sweep

pytestmark = pytest.mark.browser

#: Chart widths on a 1440 px window: a third of the page (the proxy scatters), a half column (the Structured
#: page's charts, the heatmap), the whole page. The Structured charts are never drawn narrower than a half column.
WIDTHS = (400, 650, 1000)
HALF_COLUMN = 650


def _sensitivity_map(metric: str, layers: int, sparsity: float = 0.5) -> dict:
    """A sensitivity map shaped like the core's, with negative cells (the colour bar then says "below 0")."""
    modules = ["q", "k", "v", "o", "gate", "up", "down"]
    values = [[(i - 2) * 0.01 * (j + 1) for j in range(len(modules))] for i in range(layers)]
    return {"layers": list(range(layers)), "modules": modules, "values": values, "metric": metric,
            "method": "sparsegpt", "sparsity": sparsity, "layer_values": [(i - 2) * 0.1 for i in range(layers)],
            "layer_aggregate": None}


def _figures(width: int) -> dict[str, dict]:
    from pruning_core.continual import figures as continual_figures
    from pruning_core.outputs import figures
    from pruning_core.recovery import figures as recovery_figures
    from pruning_core.structured.figures import tradeoff_figure, widths_figure

    result = structured_result("wiki")
    charts = {} if width < HALF_COLUMN else {
        "structured removed": tradeoff_figure(result, sweep("wiki"), "wiki", "removed"),
        "structured speed": tradeoff_figure(result, sweep("wiki"), "wiki", "speedup"),
        "structured widths": widths_figure(result["points"][1], DENSE_WIDTHS)}
    for layers in (2, 30):
        for metric in ("exact", "fisher"):
            sens = _sensitivity_map(metric, layers)
            charts[f"heatmap {metric} {layers}"] = figures.heatmap_figure(sens)
            charts[f"layer bars {metric} {layers}"] = figures.layer_bar_figure(sens)
    if width >= HALF_COLUMN:  # the Recovery page draws its two charts side by side
        recovery = {"dense_ppl": {"wiki": 20.0, "news": 30.0}, "pruned_ppl": {"wiki": 25.0, "news": 36.0},
                    "recovered_ppl": {"wiki": 22.0, "news": 33.0}, "spec": {"curve_windows": 2},
                    "history": {"loss": [[i, 3 - i / 100] for i in range(1, 60)],
                                "evals": [[i, {"wiki": 24 - i / 100, "news": 35 - i / 100}] for i in range(0, 60, 10)]}}
        charts["recovery loss"] = recovery_figures.loss_figure(recovery)
        charts["recovery perplexity"] = recovery_figures.perplexity_figure(recovery)
    if width >= 1000:  # the Continual page draws its charts across the page
        continual = hand_made()
        strategies = continual["strategies"]
        continual["strategies"] = {"latest": strategies["latest"], "sequential": strategies["copal"],
                                   "accumulated": strategies["copal"], "copal": strategies["copal"],
                                   "joint": strategies["joint"]}
        charts["continual R"] = continual_figures.r_matrix_figure(continual, "copal")
        charts["continual transfer"] = continual_figures.transfer_figure(continual)
        charts["continual overlap"] = continual_figures.overlap_figure(continual)
    charts["proxy scatter"] = figures.proxy_scatter_figure(_sensitivity_map("exact", 30),
                                                           _sensitivity_map("fisher", 30), 0.93)
    charts["sensitivity curves"] = figures.sensitivity_curves_figure(
        [_sensitivity_map("fisher", 30, s) for s in (0.3, 0.5, 0.7)], "down")
    return charts


def _page_of(charts: dict[str, dict], width: int) -> str:
    import plotly

    script = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text(encoding="utf-8")
    divs = "".join(f'<div id="chart-{i}" style="width:{width}px"></div>' for i in range(len(charts)))
    calls = "".join(f"Plotly.newPlot('chart-{i}', {json.dumps(f['data'])}, {json.dumps(f['layout'])});"
                    for i, f in enumerate(charts.values()))
    return f"<html><head><script>{script}</script></head><body>{divs}<script>{calls}</script></body></html>"


@pytest.mark.parametrize("width", WIDTHS)
def test_no_chart_cuts_its_text_or_prints_a_legend_over_an_axis(browser, tmp_path, width):
    charts = _figures(width)
    html = tmp_path / "charts.html"
    html.write_text(_page_of(charts, width), encoding="utf-8")
    context = browser.new_context(viewport={"width": width + 40, "height": 900})
    page = context.new_page()
    try:
        page.goto(html.as_uri())
        page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {len(charts)}")
        assert page.evaluate(LAYOUT_PROBLEMS_JS) == []
    finally:
        context.close()


def test_the_check_finds_a_cut_title_and_a_legend_over_an_axis_title(browser, tmp_path):
    """The measurement itself: the Structured chart as it was (one long title line, the legend at 20 % of the plot's
    height below it) is reported cut and overlapped."""
    from pruning_core.structured.figures import tradeoff_figure

    figure = tradeoff_figure(structured_result("wiki"), sweep("wiki"), "wiki", "speedup")
    layout = {**figure["layout"], "title": {**figure["layout"]["title"], "text":
              "Perplexity on wiki against measured speed-up (decode at batch 1, float32)"},
              "legend": {"orientation": "h", "y": -0.2}, "margin": {"l": 80, "r": 30, "t": 70, "b": 70}}
    layout.pop("height")
    html = tmp_path / "old.html"
    html.write_text(_page_of({"old": {"data": figure["data"], "layout": layout}}, 650), encoding="utf-8")
    context = browser.new_context(viewport={"width": 690, "height": 900})
    page = context.new_page()
    try:
        page.goto(html.as_uri())
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 1")
        problems = page.evaluate(LAYOUT_PROBLEMS_JS)
    finally:
        context.close()
    assert {"cut", "overlap"} <= {p["problem"] for p in problems}, problems
    assert any(p["what"].startswith("legend over Measured speed-up") for p in problems), problems

"""The Structured page's charts cannot cut their titles or print a legend over an axis (journey, issue 26 point 8):
short headlines with the corpus and settings on a second line, the legend hung under the x-axis title in pixels
with a bottom margin sized for its rows, layer indices as tick labels (not "layer 17", cut to "layer" under 30
bars) and no counts printed inside the bars. The drawn result is measured in Chromium by
tests/browser/test_chart_layout_browser.py."""

from __future__ import annotations

from pruning_core.outputs.figures import legend_below
from pruning_core.structured.figures import tradeoff_figure, widths_figure

LAYERS = 30
DENSE_WIDTHS = {"heads": 9, "channels": 1536}


def structured_result(corpus: str = "wiki") -> dict:
    """A structured result shaped like `run_structured`'s, for a 30-layer model, with measured speed."""
    points = []
    for ratio, ppl, speed in ((0.1, 24.0, 1.08), (0.2, 31.0, 1.2), (0.3, 48.0, 1.35)):
        points.append({"ratio": ratio, "measured_ratio": ratio + 0.004, "ppl": {corpus: ppl},
                       "parameters": {"model_after": int(134_515_008 * (1 - ratio))},
                       "config": {"units": ["heads", "channels"], "score": "obs", "compensate": True},
                       "speed": {"ratios": {"float32": {"prefill at 512 tokens": speed, "decode at batch 1": speed}}},
                       "widths": [{"heads": 9 - (i % 3), "channels": 1536 - 64 * (i % 5)} for i in range(LAYERS)],
                       "kept_layers": list(range(LAYERS))})
    return {"points": points, "dense_ppl": {corpus: 18.5}, "dense_widths": DENSE_WIDTHS}


def sweep(corpus: str = "wiki") -> dict:
    return {"points": [{"method": m, "structure": "unstructured", "target_sparsity": s, "sparsity": s,
                        "ppl": {corpus: 20.0 + 40 * s}} for m in ("magnitude", "wanda", "sparsegpt")
                       for s in (0.3, 0.5)]}


def test_the_tradeoff_titles_are_a_short_headline_with_the_corpus_and_phase_below():
    for axis in ("removed", "speedup"):
        title = tradeoff_figure(structured_result("news"), sweep("news"), "news", axis)["layout"]["title"]["text"]
        headline, _, detail = title.partition("<br>")
        assert len(headline) <= 40 and detail.startswith("<sup>news")  # it fits a half-width column
    speed = tradeoff_figure(structured_result(), sweep(), "wiki", "speedup")["layout"]["title"]["text"]
    assert "decode at batch 1 · float32" in speed


def test_the_legends_hang_under_the_axis_title_with_room_for_every_entry():
    for figure in (tradeoff_figure(structured_result(), sweep(), "wiki", "removed"),
                   tradeoff_figure(structured_result(), sweep(), "wiki", "speedup"),
                   widths_figure(structured_result()["points"][0], DENSE_WIDTHS)):
        layout, entries = figure["layout"], len(figure["data"])
        legend = layout["legend"]
        # In pixels from the chart's bottom edge, one entry a row: never at a fraction of the plot's height.
        assert legend["yref"] == "container" and legend["y"] == 0 and legend["yanchor"] == "bottom"
        assert legend["entrywidthmode"] == "fraction" and legend["entrywidth"] == 1.0
        assert layout["margin"]["b"] == legend_below(entries)["margin"]["b"] >= 70 + 20 * entries
        assert layout["height"] - layout["margin"]["t"] - layout["margin"]["b"] >= 250  # the plot keeps its room
    assert legend_below(5)["margin"]["b"] > legend_below(2)["margin"]["b"]


def test_the_widths_chart_labels_layers_by_index_and_keeps_counts_out_of_the_bars():
    point = structured_result()["points"][1]
    figure = widths_figure(point, DENSE_WIDTHS)
    for trace, key in zip(figure["data"], ("heads", "channels")):
        assert trace["x"] == [str(i) for i in range(LAYERS)]  # "17", not "layer 17" (cut to "layer")
        assert trace["textposition"] == "none"  # "8 of 9" inside a thin bar could not be read
        assert trace["text"][0] == f"{point['widths'][0][key]:,} of {DENSE_WIDTHS[key]:,}"  # the hover keeps them
    assert figure["layout"]["xaxis"]["title"]["text"].startswith("Decoder layer")
    assert figure["layout"]["title"]["text"].startswith("Widths per layer<br><sup>20.4 %")

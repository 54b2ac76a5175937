"""Chart specs (`pruning_core.outputs.figures`) and their themed Plotly wrappers (`app.charts`).

The inputs are small hand-written results/sensitivity dicts in the CLI's formats; the numbers are made up
for the test and never shown to users.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from pruning_core.outputs import figures as F

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULES = ["q", "k", "v", "o", "gate", "up", "down"]


def make_results() -> dict:
    points = []
    for method, slope in (("magnitude", 40.0), ("wanda", 20.0), ("sparsegpt", 15.0)):
        # Deliberately out of order: the figure must sort by sparsity.
        for target in (0.7, 0.5, 0.6):
            ppl = 20.0 + slope * (target - 0.4)
            points.append({"method": method, "structure": "unstructured", "target_sparsity": target,
                           "sparsity": target - 1e-6, "ppl": {"wiki": ppl, "news": ppl * 1.5},
                           "prune_seconds": 3.25, "eval_seconds": 1.5})
        for structure, ppl in (("2:4", 31.5 + slope), ("4:8", 27.25 + slope)):
            points.append({"method": method, "structure": structure, "target_sparsity": 0.5, "sparsity": 0.5,
                           "ppl": {"wiki": ppl}, "prune_seconds": 2.0, "eval_seconds": 1.0})
    return {
        "dense": {"ppl": {"wiki": 18.0234, "news": 25.5}},
        "points": points,
        "protocol": {"nsamples": 64, "seqlen": 512, "seed": 0, "eval_windows": 64, "dtype": "float32"},
        "env": {"torch": "2.13.0"},
    }


def make_sens(sparsity: float = 0.5, metric: str = "exact", layers: int = 4, with_names: bool = True) -> dict:
    values = [[round(0.01 * (l + 1) * (j + 1) * sparsity * 2, 6) for j in range(len(MODULES))] for l in range(layers)]
    values[1][2] = None  # a cell that was not computed
    sens = {"layers": list(range(layers)), "modules": list(MODULES), "values": values, "metric": metric,
            "method": "wanda", "sparsity": sparsity, "baseline_loss": 2.91}
    if with_names:
        sens["module_names"] = [[f"model.layers.{l}.x.{m}_proj" for m in MODULES] for l in range(layers)]
        sens["module_sizes"] = [[[576, 1536] if m == "down" else 331776 for m in MODULES] for l in range(layers)]
    return sens


def traces(fig: dict, **meta) -> list[dict]:
    return [t for t in fig["data"] if all(t.get("meta", {}).get(k) == v for k, v in meta.items())]


# ------------------------------------------------------------------------------------------------ curves


def test_curves_one_line_per_method_sorted_by_sparsity():
    fig = F.curves_figure(make_results(), "wiki")
    lines = [t for t in fig["data"] if t["mode"] == "lines+markers"]
    assert [t["name"] for t in lines] == ["magnitude", "wanda", "sparsegpt"]
    for line in lines:
        assert line["x"] == sorted(line["x"])
        assert line["x"][0] == pytest.approx(50.0, abs=1e-3)  # percent, not fraction
        assert line["line"]["color"] == F.method_color(line["meta"]["method"])
    assert traces(fig, method="wanda", structure="unstructured")[0]["y"] == pytest.approx([22.0, 24.0, 26.0])


def test_curves_nm_points_are_markers_with_structure_symbols_in_method_colour():
    fig = F.curves_figure(make_results(), "wiki")
    for method in ("magnitude", "wanda", "sparsegpt"):
        for structure, symbol in (("2:4", "diamond"), ("4:8", "square")):
            (trace,) = traces(fig, method=method, structure=structure)
            assert trace["mode"] == "markers"
            assert trace["marker"]["symbol"] == symbol == F.structure_symbol(structure)
            assert trace["marker"]["color"] == F.method_color(method)
            assert trace["legendgroup"] == method
            assert trace["x"] == [50.0]


def test_curves_dense_reference_line_at_dense_value():
    fig = F.curves_figure(make_results(), "wiki")
    (dense,) = traces(fig, role="dense")
    assert dense["y"] == [18.0234, 18.0234]
    assert dense["line"]["dash"] == "dash"
    assert dense["x"][0] == 0.0 and dense["x"][1] >= 70.0 - 1e-3  # spans the measured range
    assert "18.02" in dense["name"]


def test_curves_hover_has_exact_numbers_and_run_settings():
    fig = F.curves_figure(make_results(), "wiki")
    (wanda,) = traces(fig, method="wanda", structure="unstructured")
    hover = wanda["text"][0]
    assert wanda["hovertemplate"] == "%{text}<extra></extra>"
    assert "perplexity 22.00 on wiki" in hover
    assert "sparsity 50.00 % (target 50 %)" in hover
    assert "+22.1 % vs dense 18.02" in hover
    assert "prune 3.2 s" in hover or "prune 3.3 s" in hover
    for setting in ("calibration windows 64", "tokens/window 512", "seed 0", "eval windows 64", "dtype float32"):
        assert setting in hover


def test_curves_leave_out_points_without_the_corpus_and_support_log_scale():
    fig = F.curves_figure(make_results(), "news", log_y=True)
    assert fig["layout"]["yaxis"]["type"] == "log"
    assert not [t for t in fig["data"] if t.get("meta", {}).get("structure") in ("2:4", "4:8")]
    assert len([t for t in fig["data"] if t["mode"] == "lines+markers"]) == 3
    assert F.curves_figure(make_results(), "wiki", log_y=False)["layout"]["yaxis"]["type"] == "linear"


def test_curves_axes_have_units_and_empty_corpus_says_so():
    fig = F.curves_figure(make_results(), "wiki")
    assert fig["layout"]["xaxis"]["title"]["text"] == "sparsity (%)"
    assert fig["layout"]["yaxis"]["title"]["text"] == "perplexity"  # perplexity has no unit
    empty = F.curves_figure({"dense": {"ppl": {}}, "points": [], "protocol": {}}, "wiki")
    assert empty["data"] == []
    assert "No perplexity" in empty["layout"]["annotations"][0]["text"]


def test_curves_default_to_a_log_axis_titled_perplexity_without_unit():
    # One broken magnitude point (58,000) must not flatten the other lines: log axis by default, here and
    # in the themed dashboard chart; the title names the quantity only (perplexity has no unit).
    results = make_results()
    results["points"].append({"method": "magnitude", "structure": "unstructured", "target_sparsity": 0.9,
                              "sparsity": 0.9, "ppl": {"wiki": 58_000.0}})
    fig = F.curves_figure(results, "wiki")
    assert fig["layout"]["yaxis"]["type"] == "log"
    assert fig["layout"]["yaxis"]["title"]["text"] == F.PERPLEXITY_AXIS_TITLE == "perplexity"
    from app import charts

    drawn = charts.curves_chart(results, "wiki")
    assert drawn.layout.yaxis.type == "log" and drawn.layout.yaxis.title.text == "perplexity"
    assert charts.curves_chart(results, "wiki", log_y=False).layout.yaxis.type == "linear"


def test_perplexity_change_says_a_factor_for_a_broken_point():
    assert F.perplexity_change(19.76, 18.02) == "+9.7 %"
    assert F.perplexity_change(17.5, 18.0) == "-2.8 %"
    assert F.perplexity_change(170.0, 18.0) == "+844.4 %"  # 9.4x: still a percentage
    assert F.perplexity_change(61_530.0, 18.02) == "×3,400 (model broken)"  # not "+341,359.5 %"
    assert F.perplexity_change(200.0, 18.0) == "×11 (model broken)"
    assert F.is_broken(61_530.0, 18.02) and not F.is_broken(170.0, 18.0)
    results = make_results()
    results["points"].append({"method": "magnitude", "structure": "unstructured", "target_sparsity": 0.9,
                              "sparsity": 0.9, "ppl": {"wiki": 61_530.0}})
    hover = traces(F.curves_figure(results, "wiki"), method="magnitude", structure="unstructured")[0]["text"][-1]
    assert "×3,400 (model broken) vs dense 18.02" in hover and "%" not in hover.split("perplexity")[1].split("<br>")[0]


def test_sensitivity_titles_put_the_settings_on_a_second_line():
    # One long line was cut off in a half-width column; the headline stays short.
    for fig in (F.heatmap_figure(make_sens()), F.layer_bar_figure(make_sens()),
                F.proxy_scatter_figure(make_sens(), make_sens(metric="taylor"), 0.5),
                F.sensitivity_curves_figure([make_sens(0.3), make_sens(0.5)], "q")):
        headline, _, detail = fig["layout"]["title"]["text"].partition("<br>")
        assert len(headline) <= 30 and detail.startswith("<sup>")
        assert fig["layout"]["margin"]["t"] >= 90
    assert "wanda at 50 % sparsity · exact" in F.heatmap_figure(make_sens())["layout"]["title"]["text"]


def test_tables_format_numbers_and_show_missing_as_a_dash():
    from app import charts

    results = make_results()
    results["points"][0]["sparsity"] = 0.300001  # measured sparsity a hair over the target
    html = charts.curve_table(results).to_html()
    assert "None" not in html and "nan" not in html and "30.0001" not in html
    assert "30.0 %" in html and "50.0 %" in html  # sparsities as percentages
    assert "18.02" in html and "18.0234" not in html  # perplexities with 2 decimals
    assert ">–<" in html  # the dense row's prune time, the 2:4 points' news perplexity
    frame = charts.curve_table(results).data
    assert frame["sparsity (%)"].iloc[1] == pytest.approx(30.0001)  # numbers kept: the table sorts by value
    cells = charts.top_cells_table([{"layer": 3, "module": "down", "value": 0.0123456, "weights": 884736},
                                    {"layer": 1, "module": "q", "value": 1.5, "weights": None}]).to_html()
    assert "0.01235" in cells and "884,736" in cells and ">–<" in cells and "None" not in cells


def test_curve_table_rows_dense_first_then_points():
    rows = F.curve_table_rows(make_results())
    assert rows[0]["method"] == "dense" and rows[0]["ppl wiki"] == 18.0234
    assert len(rows) == 1 + 15
    assert {"ppl wiki", "ppl news", "sparsity (%)", "prune (s)"} <= set(rows[1])
    assert rows[1]["method"] == "magnitude" and rows[1]["structure"] == "unstructured"
    assert [r["target sparsity (%)"] for r in rows[1:4]] == [50.0, 60.0, 70.0]
    nm = [r for r in rows if r["structure"] == "2:4"]
    assert len(nm) == 3 and all(r["ppl news"] is None for r in nm)


# ------------------------------------------------------------------------------------------------ sensitivity


def test_heatmap_shape_orientation_and_missing_values():
    sens = make_sens(layers=5)
    fig = F.heatmap_figure(sens)
    (trace,) = fig["data"]
    assert trace["type"] == "heatmap"
    assert len(trace["z"]) == 5 and all(len(row) == len(MODULES) for row in trace["z"])
    assert trace["x"] == MODULES and trace["y"] == [0, 1, 2, 3, 4]
    assert trace["z"][1][2] is None  # None survives (a gap, not a zero)
    assert trace["z"][4][6] == pytest.approx(sens["values"][4][6])
    assert fig["layout"]["yaxis"]["autorange"] == "reversed"  # layer 0 at the top
    assert trace["colorscale"] in ("Viridis", "Cividis")


@pytest.mark.parametrize("metric,title", [
    ("exact", "Δ loss (nats/token)"),
    ("reconstruction", "relative output error"),
    ("taylor", "|W·∂L/∂W| sum"),
])
def test_heatmap_colorbar_titled_with_metric_unit(metric, title):
    fig = F.heatmap_figure(make_sens(metric=metric))
    assert fig["data"][0]["colorbar"]["title"]["text"] == title


def test_heatmap_hover_shows_layer_module_value_name_and_size():
    fig = F.heatmap_figure(make_sens())
    text = fig["data"][0]["text"]
    assert "layer 2 · down" in text[2][6]
    assert "0.2100" in text[2][6]  # 0.01 * 3 * 7 at 50 %
    assert "model.layers.2.x.down_proj" in text[2][6]
    assert "576×1536 (884,736 weights)" in text[2][6]
    assert "331,776 weights" in text[2][0]
    assert "not computed" in text[1][2]
    bare = F.heatmap_figure(make_sens(with_names=False))["data"][0]["text"][0][0]
    assert "layer 0 · q" in bare and "size" not in bare


def test_heatmap_non_finite_values_become_gaps_and_bad_shapes_are_rejected():
    sens = make_sens()
    sens["values"][0][0] = float("nan")
    sens["values"][0][1] = float("inf")
    fig = F.heatmap_figure(sens)
    assert fig["data"][0]["z"][0][:2] == [None, None]
    json.dumps(fig, allow_nan=False)  # valid JSON for plotly.js in the report
    sens["values"][2] = sens["values"][2][:-1]
    with pytest.raises(ValueError, match="expected one per module"):
        F.heatmap_figure(sens)


def test_layer_bar_prefers_layer_values_else_row_means():
    sens = make_sens()
    means = F.layer_bar_figure(sens)["data"][0]
    row1 = [v for v in sens["values"][1] if v is not None]
    assert means["y"][1] == pytest.approx(sum(row1) / len(row1))
    assert "mean over" in means["meta"]["aggregate"]
    sens["layer_values"] = [0.5, 0.1, 0.2, 0.05]
    whole = F.layer_bar_figure(sens)
    assert whole["data"][0]["y"] == [0.5, 0.1, 0.2, 0.05]
    assert "whole layer" in whole["layout"]["yaxis"]["title"]["text"]
    colors = whole["data"][0]["marker"]["color"]
    assert colors[3] != colors[0]  # the least sensitive layer is not highlighted
    # An estimate's layer value adds up its cells: the axis must not claim the whole layer was pruned.
    summed = F.layer_bar_figure({**sens, "metric": "fisher"})
    assert "sum over the layer's modules" in summed["layout"]["yaxis"]["title"]["text"]


def test_sensitivity_curves_one_line_per_layer_ordered_by_sparsity():
    maps = [make_sens(0.7), make_sens(0.3), make_sens(0.5)]
    fig = F.sensitivity_curves_figure(maps, "down")
    lines = [t for t in fig["data"] if "layer" in t.get("meta", {})]
    assert len(lines) == 4
    assert lines[0]["x"] == [30.0, 50.0, 70.0]
    assert lines[3]["y"] == pytest.approx([0.01 * 4 * 7 * s * 2 for s in (0.3, 0.5, 0.7)])
    assert fig["layout"]["yaxis"]["title"]["text"] == "Δ loss (nats/token)"
    assert fig["layout"]["xaxis"]["title"]["text"] == "sparsity (%)"
    many = F.sensitivity_curves_figure([make_sens(0.3, layers=30), make_sens(0.5, layers=30)], "q")
    assert traces(many, role="layer colour bar") and many["layout"]["showlegend"] is False
    with pytest.raises(ValueError, match="different metrics"):
        F.sensitivity_curves_figure([make_sens(0.3), make_sens(0.5, metric="taylor")], "q")
    with pytest.raises(ValueError, match="not in"):
        F.sensitivity_curves_figure(maps, "lm_head")


def test_proxy_scatter_matches_cells_by_label_and_reports_spearman():
    exact = make_sens()
    proxy = make_sens(metric="reconstruction")
    # Same cells, listed in another module order: values must be matched by (layer, module).
    order = list(reversed(MODULES))
    proxy["modules"] = order
    proxy["values"] = [[row[MODULES.index(m)] * 10 for m in order] if None not in row
                       else [None if row[MODULES.index(m)] is None else row[MODULES.index(m)] * 10 for m in order]
                       for row in exact["values"]]
    fig = F.proxy_scatter_figure(exact, proxy, 0.8312)
    assert "Spearman ρ = 0.83" in fig["layout"]["title"]["text"]
    assert sum(len(t["x"]) for t in fig["data"]) == 4 * 7 - 1  # the None cell is left out
    for trace in fig["data"]:
        assert trace["y"] == pytest.approx([10 * x for x in trace["x"]])
    assert fig["layout"]["xaxis"]["title"]["text"] == "exact: Δ loss (nats/token)"
    assert fig["layout"]["yaxis"]["title"]["text"] == "reconstruction: relative output error"


# ------------------------------------------------------------------------------------------------ shared


def all_figures() -> dict[str, dict]:
    return {
        "curves": F.curves_figure(make_results(), "wiki"),
        "heatmap": F.heatmap_figure(make_sens()),
        "bars": F.layer_bar_figure(make_sens()),
        "sens_curves": F.sensitivity_curves_figure([make_sens(0.3, layers=20), make_sens(0.5, layers=20)], "v"),
        "proxy": F.proxy_scatter_figure(make_sens(), make_sens(metric="taylor"), float("nan")),
    }


@pytest.mark.parametrize("name", list(all_figures()))
def test_every_figure_is_plain_json_with_titled_axes(name):
    fig = all_figures()[name]
    json.dumps(fig, allow_nan=False)
    for axis in ("xaxis", "yaxis"):
        assert fig["layout"][axis]["title"]["text"].strip()
    assert fig["layout"]["font"]["size"] >= 14  # readable on a projector


@pytest.mark.parametrize("name", list(all_figures()))
def test_charts_wrap_every_figure_as_valid_themed_plotly(name):
    go = pytest.importorskip("plotly.graph_objects")
    from app import charts

    fig = charts.to_plotly(all_figures()[name])  # plotly validates every property here
    assert isinstance(fig, go.Figure)
    assert list(fig.layout.template.layout.colorway) == F.COLORWAY
    assert fig.layout.font.size == F.BASE_FONT_SIZE


def test_chart_wrappers_keep_data():
    from app import charts

    curves = charts.curves_chart(make_results(), "wiki", log_y=True)
    assert curves.layout.yaxis.type == "log"
    assert [t.name for t in curves.data if t.mode == "lines+markers"] == ["magnitude", "wanda", "sparsegpt"]
    heat = charts.heatmap_chart(make_sens())
    assert heat.data[0].z[1][2] is None
    assert len(charts.layer_bar_chart(make_sens()).data[0].y) == 4
    assert len(charts.sensitivity_curves_chart([make_sens(0.3), make_sens(0.6)], "k").data) == 4
    assert len(charts.proxy_scatter_chart(make_sens(), make_sens(metric="taylor"), 0.5).data) == 7


def test_palette_is_okabe_ito_and_maps_are_stable():
    assert set(F.PALETTE.values()) == {"#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2",
                                       "#D55E00", "#CC79A7"}
    assert len(set(F.METHOD_COLORS.values())) == len(F.METHOD_COLORS)
    assert F.method_color("some_new_method") == F.method_color("some_new_method") in F.COLORWAY
    assert F.structure_symbol("2:8") == F.structure_symbol("2:8")
    assert F.structure_symbol("unstructured") == "circle"


def test_figures_module_imports_neither_plotly_nor_streamlit():
    code = (
        "import sys, json; import pruning_core.outputs.figures as F; "
        "F.heatmap_figure({'layers': [0], 'modules': ['q'], 'values': [[1.0]], 'metric': 'exact'}); "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('plotly', 'streamlit'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_number_formatting_is_exact_enough():
    assert F.fmt(0.000123456) == "1.235e-04"
    assert F.fmt(0.0123456) == "0.01235"
    assert F.fmt(12345.678) == "12,346"
    assert F.fmt(None) == "not computed"
    assert F.finite(float("nan")) is None and F.finite("x") is None and F.finite(True) is None
    assert math.isclose(F.finite("1.5"), 1.5)


def _page_with_two_charts(repo_root: str):
    # AppTest runs this function's source as a script: imports must be inside, the repo root passed in.
    import sys

    sys.path.insert(0, repo_root)
    from app import charts
    from tests.app.test_charts import make_results, make_sens

    charts.show(charts.curves_chart(make_results(), "wiki"), key="curves")
    charts.show(charts.heatmap_chart(make_sens()), key="heatmap", alt="sensitivity heatmap")


def test_show_draws_charts_with_our_theme_not_streamlits():
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_page_with_two_charts, args=(str(REPO_ROOT),), default_timeout=30)
    at.run()
    assert not at.exception
    drawn = at.get("plotly_chart")
    assert len(drawn) == 2
    for element in drawn:
        assert element.proto.theme == ""  # theme=None: our fonts and colours, not Streamlit's chart theme
        assert json.loads(element.proto.spec)["layout"]["font"]["size"] == F.BASE_FONT_SIZE
        assert '"displaylogo": false' in element.proto.config


def test_log_axis_labels_read_as_perplexities_not_digits():
    """Plotly's own log ticks label 20 as "2"; the curves' axis names every tick by its value."""
    results = {"dense": {"ppl": {"wiki": 19.31}}, "protocol": {},
               "points": [{"method": "wanda", "structure": "unstructured", "target_sparsity": 0.5, "sparsity": 0.5,
                           "ppl": {"wiki": 37.67}},
                          {"method": "magnitude", "structure": "unstructured", "target_sparsity": 0.5,
                           "sparsity": 0.5, "ppl": {"wiki": 58_000.0}}]}
    axis = F.curves_figure(results, "wiki")["layout"]["yaxis"]
    assert axis["type"] == "log" and axis["ticktext"][0] == "20" and "50,000" in axis["ticktext"]
    assert all(float(text.replace(",", "")) == value for text, value in zip(axis["ticktext"], axis["tickvals"]))
    assert "tickvals" not in F.curves_figure(results, "wiki", log_y=False)["layout"]["yaxis"]


def test_curve_table_draws_a_missing_time_as_a_dash():
    from app import charts

    results = {"dense": {"ppl": {"wiki": 19.3}, "eval_seconds": {"wiki": 2.0}}, "protocol": {},
               "points": [{"method": "wanda", "structure": "unstructured", "target_sparsity": 0.5, "sparsity": 0.5,
                           "ppl": {"wiki": 37.6}, "prune_seconds": 24.2, "eval_seconds": 2.8}]}
    styled = charts.curve_table(results)
    # st.dataframe draws a missing number as "None" whatever the Styler says: the gap must be the dash itself.
    assert list(styled.data["prune (s)"]) == ["–", "24.2"]
    assert styled.data["ppl wiki"].dtype == float  # a complete column keeps its numbers (sorting)
    assert "None" not in styled.to_html() and "nan" not in styled.to_html()


def test_negative_sensitivities_are_explained_on_the_colour_scale_and_in_their_hover():
    """Journey point 7: a map with cells below 0 says what they mean (the colour bar points to the hover, the hover
    of each such cell explains it); a map without any says nothing of it."""
    sens = make_sens()
    sens["values"][0][0] = -0.002
    fig = F.heatmap_figure(sens)
    assert "below 0: see hover" in fig["data"][0]["colorbar"]["title"]["text"]
    assert F.NEGATIVE_NOTE in fig["data"][0]["text"][0][0] and F.NEGATIVE_NOTE not in fig["data"][0]["text"][0][1]
    positive = F.heatmap_figure(make_sens())
    assert "below 0" not in positive["data"][0]["colorbar"]["title"]["text"]


def test_the_hover_says_how_many_evaluation_windows_a_short_text_gave():
    """Journey point 8: "(16 windows)" was said of an evaluation text that held 5. The hover names the windows
    measured on the corpus shown when fewer than asked."""
    results = make_results()
    results["protocol"] = {**results.get("protocol", {}), "eval_windows": 16,
                           "eval_windows_used": {"wiki": 5, "news": 16}}
    short = F.curves_figure(results, "wiki")["data"][-1]["text"][0]
    assert "eval windows 5 of 16 asked (the text holds no more)" in short
    full = F.curves_figure(results, "news")["data"][-1]["text"][0]
    assert "eval windows 16" in full and "asked" not in full

"""Plotly figures for the dashboard: the chart specs of `pruning_core.outputs.figures`, themed.

Thin on purpose: every chart is defined once, as a plain dict, in `pruning_core.outputs.figures` (the report embeds
the same dicts with plotly.js). Here they become `plotly.graph_objects.Figure`s with the dashboard template.
Show them with `show(fig, key=...)`: it passes ``theme=None`` (Streamlit's default "streamlit" chart theme
would override our fonts and colours: small grey axis text, doubled bold titles) and a toolbar config
that downloads a 2x PNG. Streamlit 1.67 deprecates ``use_container_width``; ``width="stretch"`` replaces it.
"""

from __future__ import annotations

import plotly.graph_objects as go

from app import formats
from app.theme import PLOTLY_TEMPLATE
from pruning_core.analysis.sweep_results import point_allocation
from pruning_core.outputs import figures

# Table helpers and units of the same chart specifications, re-exported so pages never import the core.
corpora_in = figures.corpora_in
metric_unit = figures.metric_unit
perplexity_change = figures.perplexity_change
is_broken = figures.is_broken

MISSING = formats.MISSING  # what a missing number shows in a table

__all__ = [
    "PLOTLY_CONFIG",
    "to_plotly",
    "show",
    "curves_chart",
    "allocations_in",
    "point_allocation",
    "curve_table_rows",
    "heatmap_chart",
    "plan_heatmap_chart",
    "layer_bar_chart",
    "sensitivity_curves_chart",
    "proxy_scatter_chart",
    "curve_table",
    "top_cells_table",
]


def to_plotly(fig_dict: dict) -> go.Figure:
    """A plain figure dict (``{"data": [...], "layout": {...}}``) -> a themed Plotly Figure.

    The figure's own layout wins over the template (the template only fills what the spec leaves unset).
    Plotly validates every property here, so a typo in a spec fails loudly in the tests.
    """
    fig = go.Figure(fig_dict)
    fig.update_layout(template=go.layout.Template(PLOTLY_TEMPLATE))
    return fig


#: plotly.js options for every dashboard chart: no logo, a crisp PNG export, scroll does not zoom the page.
PLOTLY_CONFIG: dict = {
    "displaylogo": False,
    "scrollZoom": False,
    "toImageButtonOptions": {"format": "png", "scale": 2},
    "modeBarButtonsToRemove": ["lasso2d", "select2d"],
}


def show(fig: go.Figure, *, key: str, container=None, alt: str | None = None):
    """Draw `fig` in the page (or in `container`, e.g. a column) with PruneScope's look.

    `key` is required so a chart keeps its zoom state across reruns and tests can find it; `alt` is the
    text screen readers get. Returns what ``st.plotly_chart`` returns.
    """
    import streamlit as st  # local: the figure builders above work without a Streamlit session

    target = container if container is not None else st
    return target.plotly_chart(fig, width="stretch", theme=None, key=key, config=PLOTLY_CONFIG, alt=alt)


#: Line dash of each allocation when a chart overlays several (uniform solid: the reference every plan beats).
#: Never plain "dash": that is the dense model's line.
ALLOCATION_DASHES = {"uniform": "solid", "owl": "dashdot", "sensitivity": "dot"}
_OTHER_DASHES = ("longdash", "longdashdot")


def allocations_in(results: dict) -> list[str]:
    """The allocations of a results dict's points: "uniform" first, then the others as they appear."""
    present = list(dict.fromkeys(point_allocation(p) for p in results.get("points") or []))
    return sorted(present, key=lambda a: a != "uniform")


def allocation_dash(allocation: str, position: int = 0) -> str:
    """The line dash of an allocation (a fixed one for the known allocators, else by its position)."""
    return ALLOCATION_DASHES.get(allocation) or _OTHER_DASHES[position % len(_OTHER_DASHES)]


def _only(results: dict, allocation: str) -> dict:
    return {**results, "points": [p for p in results.get("points") or [] if point_allocation(p) == allocation]}


def curves_chart(results: dict, corpus: str, log_y: bool = True) -> go.Figure:
    """Perplexity vs sparsity on `corpus`, log axis unless `log_y` is False (see `figures.curves_figure`).

    With points of more than one allocation, each allocation gets its own lines (one per method, in the
    method's colour and legend group) with the allocation's dash (`ALLOCATION_DASHES`), named
    "<method> · <allocation>" and with `meta["allocation"]`, so uniform and OWL of one method sit side by side.
    """
    fig = figures.curves_figure(results, corpus, log_y=log_y)  # the layout (axes, log ticks over every point)
    allocations = allocations_in(results)
    if len(allocations) > 1:
        data = [t for t in fig["data"] if (t.get("meta") or {}).get("role") == "dense"]
        for position, allocation in enumerate(allocations):
            for trace in figures.curves_figure(_only(results, allocation), corpus, log_y=log_y)["data"]:
                if (trace.get("meta") or {}).get("role") == "dense":
                    continue
                trace["name"] = f"{trace['name']} · {allocation}"
                trace["line"] = {**trace.get("line", {}), "dash": allocation_dash(allocation, position)}
                trace["meta"] = {**trace.get("meta", {}), "allocation": allocation}
                trace["text"] = [f"{text}<br>allocation: {allocation}" for text in trace.get("text") or []]
                data.append(trace)
        fig = {**fig, "data": data}
        fig["layout"] = {**fig["layout"], "legend": {**fig["layout"].get("legend", {}),
                                                     "title": {"text": "method · structure · allocation"}}}
    return to_plotly(fig)


def curve_table_rows(results: dict) -> list[dict]:
    """The Curves table's rows (`figures.curve_table_rows`); with more than one allocation, the rows of each
    allocation in turn, with an "allocation" column after the method (the dense row once, first)."""
    allocations = allocations_in(results)
    if len(allocations) <= 1:
        return figures.curve_table_rows(results)
    rows: list[dict] = []
    for allocation in allocations:
        own = figures.curve_table_rows(_only(results, allocation))
        if not rows:
            rows.append({"method": own[0]["method"], "allocation": "-",
                         **{k: v for k, v in own[0].items() if k != "method"}})
        rows.extend({"method": r["method"], "allocation": allocation,
                     **{k: v for k, v in r.items() if k != "method"}} for r in own[1:])
    return rows


def heatmap_chart(sens: dict) -> go.Figure:
    """Layers x modules sensitivity heatmap (see `pruning_core.outputs.figures.heatmap_figure`)."""
    return to_plotly(figures.heatmap_figure(sens))


def plan_heatmap_chart(plan: dict, global_sparsity: float) -> go.Figure:
    """A sparsity plan (`SparsityPlan.to_dict()`) as a layers x module-kinds heatmap of sparsities in %.

    Drawn with the sensitivity heatmap's specification (`figures.heatmap_figure`: same axes, layer 0 at the
    top, same colour scale), so a plan and a map side by side read alike; titled with the allocator and the
    plan's global sparsity by parameters (`global_sparsity`, a fraction, from the core). The trace's `meta`
    says {"role": "plan", "allocator", "global_sparsity"}.
    """
    values = [[100.0 * float(v) for v in row] for row in plan["values"]]
    origin = (plan.get("settings") or {}).get("edited_from")
    who = f"{plan.get('allocator', '?')} (from {origin})" if origin else str(plan.get("allocator", "?"))
    as_map = {"layers": list(range(len(values))), "modules": list(plan["kinds"]), "values": values,
              "metric": "sparsity (%)", "method": who, "sparsity": None}
    fig = to_plotly(figures.heatmap_figure(as_map))
    # Short enough for a half-width column: a longer second line was cut off at the chart's edge.
    fig.update_layout(title_text=f"Sparsity plan<br><sup>{who} · {100.0 * float(global_sparsity):.1f} % "
                                 "of weights, by parameters</sup>")
    fig.update_traces(meta={"role": "plan", "allocator": plan.get("allocator"),
                            "global_sparsity": float(global_sparsity)})
    return fig


def layer_bar_chart(sens: dict) -> go.Figure:
    """Per-layer sensitivity bars (see `pruning_core.outputs.figures.layer_bar_figure`)."""
    return to_plotly(figures.layer_bar_figure(sens))


def sensitivity_curves_chart(maps: list[dict], module: str) -> go.Figure:
    """One module kind's sensitivity vs sparsity, a line per layer (see `figures.sensitivity_curves_figure`)."""
    return to_plotly(figures.sensitivity_curves_figure(maps, module))


def proxy_scatter_chart(exact: dict, proxy: dict, spearman: float) -> go.Figure:
    """A cheap proxy against the exact metric with its rank correlation (see `figures.proxy_scatter_figure`)."""
    return to_plotly(figures.proxy_scatter_figure(exact, proxy, spearman))


# ------------------------------------------------------------------------------------------------ tables


def _styled(rows: list[dict], formats: dict):
    """`rows` as a pandas Styler for ``st.dataframe``: each column shown with its format, missing as a dash.

    Complete columns keep their numbers (the table still sorts by value); only what is drawn is formatted, so
    a measured sparsity of 0.300001 reads "30.0 %", not 30.0001. st.dataframe draws a missing number as
    "None" whatever the Styler says, so a column with a gap (a dense row's prune time) is turned into its
    formatted text, with "–" in the gap.
    """
    import pandas as pd

    frame = pd.DataFrame(rows)
    present = {column: fmt for column, fmt in formats.items() if column in frame.columns}
    with_gaps = [column for column in present if frame[column].isna().any()]
    for column in with_gaps:
        fmt = present[column]
        frame[column] = [MISSING if pd.isna(v) else fmt.format(float(v)) for v in frame[column]]
    numeric = {c: fmt for c, fmt in present.items() if c not in with_gaps}
    frame = frame.astype({column: float for column in numeric})
    return frame.style.format(numeric, na_rep=MISSING).format(na_rep=MISSING, subset=[
        c for c in frame.columns if c not in numeric])


def curve_table(results: dict):
    """The Curves table (`curve_table_rows`): perplexities with 2 decimals, sparsities as "50.0 %",
    seconds with 1 decimal, missing values as "–"."""
    rows = curve_table_rows(results)
    formats = {}
    for column in rows[0] if rows else []:
        if column.startswith("ppl "):
            formats[column] = "{:,.2f}"
        elif column.endswith("(%)"):
            formats[column] = "{:.1f} %"
        elif column.endswith("(s)"):
            formats[column] = "{:,.1f}"
    return _styled(rows, formats)


def top_cells_table(cells: list[dict]):
    """The most sensitive cells (`services.sensitivity.top_cells`): values with 4 significant digits, weight counts with
    thousands separators, missing as "–"."""
    return _styled(cells, {"value": "{:.4g}", "weights": "{:,.0f}"})

"""Chart specifications as plain Plotly figure dicts: one definition per chart, shared by dashboard and report.

Every function here returns ``{"data": [...], "layout": {...}}`` built from plain Python types (str, int,
float, None, lists, dicts), so that:
  * the dashboard turns it into a ``plotly.graph_objects.Figure`` (``app/charts.py``), and
  * the report writer dumps it with ``json.dumps`` and hands it to plotly.js (``Plotly.newPlot``),
and both show exactly the same picture. This module must not import plotly or streamlit (the core stays
importable without them); a test checks ``sys.modules`` in a subprocess.

Conventions, chosen for a projector and for colour-blind readers:
  * colours come from the Okabe-Ito palette (Okabe & Ito, "Color Universal Design", 2008), each method
    always has the same colour and each structure the same marker symbol, in every chart;
  * heatmaps use a perceptually uniform sequential scale (Viridis), readable in greyscale;
  * every axis has a title with its unit (perplexity has none: its axis says just "perplexity"); fonts are
    16 px and up; perplexity is drawn on a log axis by default, so one broken point (a perplexity in the
    tens of thousands) does not flatten every other line;
  * hover text carries the exact numbers (and, for curves, the run settings that produced them);
  * values that are missing or not finite become ``None`` (a gap), never NaN, which is invalid JSON.

Input formats are those the CLI writes: ``results.json`` (see ``curves_figure``) and ``sensitivity.json``
(see ``heatmap_figure``).
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Iterable, Sequence

from pruning_core.data import corpus_display_name

__all__ = [
    "PALETTE",
    "METHOD_COLORS",
    "DENSE_COLOR",
    "STRUCTURE_SYMBOLS",
    "METRIC_UNITS",
    "SPARSITY_AXIS_TITLE",
    "PERPLEXITY_AXIS_TITLE",
    "BROKEN_RATIO",
    "FONT_FAMILY",
    "method_color",
    "structure_symbol",
    "metric_unit",
    "corpora_in",
    "curve_table_rows",
    "perplexity_change",
    "is_broken",
    "curves_figure",
    "heatmap_figure",
    "layer_bar_figure",
    "sensitivity_curves_figure",
    "proxy_scatter_figure",
]

# ---------------------------------------------------------------------------------------------------------
# Shared visual vocabulary
# ---------------------------------------------------------------------------------------------------------

#: Okabe-Ito colour-blind-safe palette (black first, as in the original; yellow last: weak on white).
PALETTE: dict[str, str] = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}

#: Order in which colours are handed out to series that have no fixed colour (yellow last: low contrast).
COLORWAY: list[str] = [
    PALETTE["blue"],
    PALETTE["vermillion"],
    PALETTE["bluish_green"],
    PALETTE["reddish_purple"],
    PALETTE["orange"],
    PALETTE["sky_blue"],
    PALETTE["black"],
    PALETTE["yellow"],
]

#: Fixed colour per pruning method, so a method looks the same on every page and in the report.
METHOD_COLORS: dict[str, str] = {
    "magnitude": PALETTE["vermillion"],
    "wanda": PALETTE["blue"],
    "sparsegpt": PALETTE["bluish_green"],
    "structured": PALETTE["reddish_purple"],
    "copal": PALETTE["orange"],
}

#: The dense (unpruned) model: a neutral dark grey reference.
DENSE_COLOR = "#4D4D4D"

#: Marker symbol per sparsity structure (plotly symbol names). Unknown N:M strings fall back by hash.
STRUCTURE_SYMBOLS: dict[str, str] = {
    "unstructured": "circle",
    "2:4": "diamond",
    "4:8": "square",
    "1:4": "triangle-up",
    "8:16": "star",
}
_FALLBACK_SYMBOLS = ["triangle-down", "pentagon", "hexagon", "cross", "x", "star-diamond"]

#: Colour-bar / axis title per sensitivity metric: what the number is, with its unit.
METRIC_UNITS: dict[str, str] = {
    "exact": "Δ loss (nats/token)",
    "fisher": "estimated Δ loss (nats/token)",
    "reconstruction": "relative output error",
    "taylor": "|W·∂L/∂W| sum",
}

SPARSITY_AXIS_TITLE = "sparsity (%)"
PERPLEXITY_AXIS_TITLE = "perplexity"  # a ratio-like quantity (exp of the mean token NLL): it has no unit
#: A point whose perplexity is this many times the dense model's is called broken: its text is no longer
#: usable, and a percentage ("+341459.1 %") would only impress, so the change is said as a factor instead.
BROKEN_RATIO = 10.0
LAYER_AXIS_TITLE = "decoder layer (index, 0 = first)"
MODULE_AXIS_TITLE = "module kind"

#: Streamlit's own font first, then common system fonts (the report opens offline: no web fonts).
FONT_FAMILY = '"Source Sans Pro", "Source Sans 3", "Segoe UI", "Helvetica Neue", Arial, sans-serif'
BASE_FONT_SIZE = 16  # px; readable from the back of a meeting room
TITLE_FONT_SIZE = 20
HOVER_FONT_SIZE = 15
SEQUENTIAL_COLORSCALE = "Viridis"  # perceptually uniform, colour-blind safe, survives greyscale printing

# Viridis sampled at 10 evenly spaced stops: used to colour one line per layer (early = dark, late = yellow).
_VIRIDIS_STOPS = [
    "#440154", "#482878", "#3E4989", "#31688E", "#26828E",
    "#1F9E89", "#35B779", "#6ECE58", "#B5DE2B", "#FDE725",
]


def method_color(method: str) -> str:
    """Colour of a pruning method: fixed for known methods, a stable palette colour otherwise."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return COLORWAY[zlib.crc32(method.encode("utf-8")) % len(COLORWAY)]


def structure_symbol(structure: str) -> str:
    """Plotly marker symbol of a sparsity structure ("unstructured", "2:4", "4:8", ...)."""
    if structure in STRUCTURE_SYMBOLS:
        return STRUCTURE_SYMBOLS[structure]
    return _FALLBACK_SYMBOLS[zlib.crc32(structure.encode("utf-8")) % len(_FALLBACK_SYMBOLS)]


def metric_unit(metric: str) -> str:
    """Title (with unit) of a sensitivity metric's values; the metric name itself when unknown."""
    return METRIC_UNITS.get(metric, metric)


def base_layout(title: str, **extra: Any) -> dict:
    """Layout shared by every chart: fonts, white background, margins, hover style."""
    layout = {
        "title": {"text": title, "font": {"size": TITLE_FONT_SIZE}, "xref": "paper", "x": 0.0, "xanchor": "left"},
        "font": {"family": FONT_FAMILY, "size": BASE_FONT_SIZE, "color": "#262730"},
        "paper_bgcolor": "#FFFFFF",
        "plot_bgcolor": "#FFFFFF",
        "colorway": list(COLORWAY),
        "margin": {"l": 80, "r": 30, "t": 70, "b": 70},
        "hoverlabel": {"font": {"family": FONT_FAMILY, "size": HOVER_FONT_SIZE}, "align": "left"},
        "hovermode": "closest",
    }
    layout.update(extra)
    return layout


#: Pixels under the plot area that its tick labels and x-axis title take (16 px font), and one legend row.
_AXIS_BAND_PX = 78
_LEGEND_ROW_PX = 24


def legend_below(entries: int, top: int = 70, plot_height: int = 300, per_row: int = 1,
                 axis_band: int = _AXIS_BAND_PX) -> dict:
    """Layout keys (legend, margin, height) that hang the legend under the x-axis title, `per_row` entries a row.

    The legend is placed in pixels from the chart's bottom edge (container coordinates), each entry a fixed share
    of the width, and the bottom margin is sized for the axis band plus the rows, so the legend can never be
    printed over the axis title or the tick labels, whatever the chart's width (a legend at a fraction of the
    plot's height below it was, on a short chart). `top`: the top margin (px; 100 for a two-line title);
    `plot_height`: the plot area's height (px); `per_row`: 2 for short entry names in a half-width column;
    `axis_band`: the pixels the tick labels and the axis title take (more for slanted labels).
    """
    rows = -(-max(1, entries) // max(1, per_row))
    bottom = axis_band + rows * _LEGEND_ROW_PX + 12
    return {"legend": {"orientation": "h", "entrywidthmode": "fraction", "entrywidth": 1.0 / max(1, per_row),
                       "xref": "container", "x": 0.0, "xanchor": "left",
                       "yref": "container", "y": 0.0, "yanchor": "bottom"},
            "margin": {"l": 80, "r": 30, "t": top, "b": bottom}, "height": top + plot_height + bottom}


def two_line_title(headline: str, details: str) -> str:
    """A chart title as a short headline and, on a smaller second line, its details (corpus, settings): one
    long line does not fit a half-width column and is cut at the chart's edge."""
    return f"{headline}<br><sup>{details}</sup>"


def axis(title: str, **extra: Any) -> dict:
    """An axis with a titled unit, light grid, and zero line."""
    axis = {
        "title": {"text": title},
        "showgrid": True,
        "gridcolor": "#E5E5E5",
        "zeroline": False,
        "showline": True,
        "linecolor": "#888888",
        "ticks": "outside",
        # Room for long tick labels ("after step 3 (manuals.txt)") before the axis title: the dashboard's template
        # sets it too, the report's plotly.js does not, and the title was printed over the labels there.
        "automargin": True,
    }
    # None means "let plotly decide": leave the key out, so the JSON stays clean for plotly.js.
    axis.update({key: value for key, value in extra.items() if value is not None})
    return axis


# ---------------------------------------------------------------------------------------------------------
# Number helpers
# ---------------------------------------------------------------------------------------------------------


def finite(value: Any) -> float | None:
    """A plain float, or None for missing / non-numeric / NaN / inf values (gaps in the chart)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def fmt(value: float | None, digits: int = 4) -> str:
    """Exact-enough display of a number: `digits` significant digits, thousands separators, no 1e-05 noise."""
    if value is None:
        return "not computed"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if 1e-3 <= magnitude < 1e6:
        decimals = max(0, digits - 1 - int(math.floor(math.log10(magnitude))))
        return f"{value:,.{decimals}f}"
    return f"{value:.{digits - 1}e}"


def fmt_ppl(value: float) -> str:
    """Perplexity with two decimals (the papers' precision) and thousands separators."""
    return f"{value:,.2f}"


def is_broken(ppl: float, dense: float) -> bool:
    """Whether a pruned perplexity is `BROKEN_RATIO` times the dense one or worse (the model is broken)."""
    return dense > 0 and ppl / dense >= BROKEN_RATIO


def perplexity_change(ppl: float, dense: float) -> str:
    """The change from the dense perplexity in words a reader can use: "+9.6 %" below `BROKEN_RATIO` x dense,
    else a factor with two significant digits and a verdict, "×3,400 (model broken)", never "+341459.1 %"."""
    if not dense or dense <= 0:
        return "change unknown"
    ratio = ppl / dense
    if ratio < BROKEN_RATIO:
        return f"{100.0 * (ratio - 1.0):+.1f} %"
    digits = int(math.floor(math.log10(ratio)))
    rounded = round(ratio, 1 - digits)  # two significant digits: 12, 340, 3,400, 58,000
    return f"×{rounded:,.0f} (model broken)"


def _percent(fraction: float) -> float:
    """Fraction in [0, 1] -> percent, rounded so 0.5 shows as 50.0 and not 50.00000001."""
    return round(100.0 * fraction, 4)


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in (finite(x) for x in values) if v is not None]
    return sum(kept) / len(kept) if kept else None


# ---------------------------------------------------------------------------------------------------------
# Perplexity vs sparsity (results.json)
# ---------------------------------------------------------------------------------------------------------


def corpora_in(results: dict) -> list[str]:
    """Evaluation corpora present in a results dict, dense first, in first-seen order."""
    seen: dict[str, None] = {}
    for corpus in (results.get("dense", {}).get("ppl") or {}):
        seen[corpus] = None
    for point in results.get("points", []):
        for corpus in (point.get("ppl") or {}):
            seen[corpus] = None
    return list(seen)


def _protocol_line(protocol: dict, corpus: str | None = None) -> str:
    """One hover line with the run settings that produced a number (only those the protocol records). With
    `corpus`, the evaluation windows are those measured on it (`eval_windows_used`) when its text held fewer than
    asked: "eval windows 5 of 16 asked", never a flat "16" for a text that holds 5."""
    # Plain words, not the CLI's flag names (a hover label cannot carry its own explanation).
    labels = [
        ("nsamples", "calibration windows"),
        ("seqlen", "tokens/window"),
        ("seed", "seed"),
        ("eval_windows", "eval windows"),
        ("dtype", "dtype"),
        ("propagation", "statistics from"),
        ("calib", "calibration"),
    ]
    parts = []
    for key, label in labels:
        value = protocol.get(key, protocol.get(key.replace("_", "-")))
        used = (protocol.get("eval_windows_used") or {}).get(corpus) if key == "eval_windows" else None
        if used is not None and value is not None and int(used) < int(value):
            value = f"{int(used)} of {value} asked (the text holds no more)"
        if value is not None and value != "":
            # A corpus by its display name: an upload's stored path leaked into the hover otherwise.
            parts.append(f"{label} {corpus_display_name(value) if key == 'calib' else value}")
    return " · ".join(parts)


def _ordered_methods(points: Sequence[dict]) -> list[str]:
    """Known methods in a fixed order (magnitude, wanda, sparsegpt, ...), then others as they appear."""
    present = list(dict.fromkeys(p["method"] for p in points))
    known = [m for m in METHOD_COLORS if m in present]
    return known + [m for m in present if m not in known]


def curve_table_rows(results: dict) -> list[dict]:
    """The numbers behind ``curves_figure`` as flat rows (dense first), for a table or a CSV download.

    Columns: method, structure, target sparsity (%), sparsity (%), one ``ppl <corpus>`` column per corpus,
    prune (s), eval (s). Sparsities are percentages of the pruned linears' weights.
    """
    corpora = corpora_in(results)
    dense_ppl = results.get("dense", {}).get("ppl") or {}
    rows = [
        {
            "method": "dense",
            "structure": "-",
            "target sparsity (%)": 0.0,
            "sparsity (%)": 0.0,
            **{f"ppl {corpus_display_name(c)}": finite(dense_ppl.get(c)) for c in corpora},
            "prune (s)": None,
            # The dense reference is evaluated once per corpus: its eval time is the sum over corpora.
            "eval (s)": finite(sum((results.get("dense", {}).get("eval_seconds") or {}).values()) or None),
        }
    ]
    points = list(results.get("points", []))
    order = {m: i for i, m in enumerate(_ordered_methods(points))}
    points.sort(key=lambda p: (order[p["method"]], p.get("structure") != "unstructured",
                               p.get("structure", ""), finite(p.get("sparsity")) or 0.0))
    for p in points:
        target = finite(p.get("target_sparsity"))
        measured = finite(p.get("sparsity"))
        rows.append(
            {
                "method": p["method"],
                "structure": p.get("structure", "unstructured"),
                "target sparsity (%)": None if target is None else _percent(target),
                "sparsity (%)": None if measured is None else _percent(measured),
                **{f"ppl {corpus_display_name(c)}": finite((p.get("ppl") or {}).get(c)) for c in corpora},
                "prune (s)": finite(p.get("prune_seconds")),
                "eval (s)": finite(p.get("eval_seconds")),
            }
        )
    return rows


def _point_hover(point: dict, corpus: str, ppl: float, dense: float | None, settings: str) -> str:
    structure = point.get("structure", "unstructured")
    measured = finite(point.get("sparsity"))
    target = finite(point.get("target_sparsity"))
    lines = [f"<b>{point['method']}</b> · {structure}"]
    sparsity_line = f"sparsity {_percent(measured):.2f} %" if measured is not None else "sparsity ?"
    if target is not None:
        sparsity_line += f" (target {_percent(target):g} %)"
    lines.append(sparsity_line)
    ppl_line = f"perplexity {fmt_ppl(ppl)} on {corpus_display_name(corpus)}"
    if dense:
        ppl_line += f" ({perplexity_change(ppl, dense)} vs dense {fmt_ppl(dense)})"
    lines.append(ppl_line)
    timing = []
    if finite(point.get("prune_seconds")) is not None:
        timing.append(f"prune {float(point['prune_seconds']):.1f} s")
    if finite(point.get("eval_seconds")) is not None:
        timing.append(f"eval {float(point['eval_seconds']):.1f} s")
    if timing:
        lines.append(" · ".join(timing))
    if settings:
        lines.append(settings)
    return "<br>".join(lines)


def log_ticks(values: Sequence[float]) -> dict:
    """Tick positions and labels of a log axis over `values`: 1-2-5 steps of every decade the values span,
    labelled as whole numbers ("20", "1,000"). Plotly's own log ticks label the in-between ticks with one digit
    ("2" for 20), which reads as a perplexity of 2; {} when there is nothing positive to place."""
    positive = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if not positive:
        return {}
    low, high = min(positive) / 1.15, max(positive) * 1.15
    ticks = [m * 10 ** e for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
             for m in (1, 2, 5) if low <= m * 10 ** e <= high]
    if len(ticks) < 2:  # a narrow range: its ends are the ticks
        ticks = [min(positive), max(positive)]
    return {"tickvals": ticks, "ticktext": [f"{v:,.0f}" if v >= 10 else f"{v:.3g}" for v in ticks]}


def curves_figure(results: dict, corpus: str, log_y: bool = True) -> dict:
    """Perplexity on `corpus` against measured sparsity (%), one line per method.

    `results` is the CLI's results.json dict::

        {"dense": {"ppl": {corpus: float}}, "protocol": {...}, "env": {...},
         "points": [{"method", "structure", "target_sparsity", "sparsity", "ppl": {corpus: float},
                     "prune_seconds", "eval_seconds"}, ...]}

    Traces, in order: the dense model as a dashed horizontal reference line (name "dense"), one
    ``lines+markers`` trace per method for its unstructured points sorted by sparsity, then one
    ``markers`` trace per (method, N:M structure) with that structure's symbol in the method's colour.
    Points without a finite perplexity on `corpus` are left out. Each trace carries
    ``meta = {"method", "structure"}`` (or ``{"role": "dense"}``) so tests and pages can find it.
    The perplexity axis is logarithmic by default (`log_y`): perplexity explodes at high sparsity, and on a
    linear axis one magnitude point at 58,000 flattens every other line; ``log_y=False`` gives a linear axis.
    """
    settings = _protocol_line(results.get("protocol") or {}, corpus)
    dense_ppl = finite((results.get("dense", {}).get("ppl") or {}).get(corpus))
    points = [p for p in results.get("points", []) if finite((p.get("ppl") or {}).get(corpus)) is not None]

    data: list[dict] = []
    max_x = 0.0
    for method in _ordered_methods(points):
        color = method_color(method)
        own = [p for p in points if p["method"] == method]
        structures = list(dict.fromkeys(p.get("structure", "unstructured") for p in own))
        # Unstructured first (the line), then N:M markers, each in its legend group under the method.
        structures.sort(key=lambda s: s != "unstructured")
        for structure in structures:
            group = [p for p in own if p.get("structure", "unstructured") == structure]
            group.sort(key=lambda p: finite(p.get("sparsity")) or finite(p.get("target_sparsity")) or 0.0)
            xs = []
            for p in group:
                fraction = finite(p.get("sparsity"))
                if fraction is None:
                    fraction = finite(p.get("target_sparsity")) or 0.0
                xs.append(_percent(fraction))
            ys = [float(p["ppl"][corpus]) for p in group]
            max_x = max([max_x, *xs])
            hover = [_point_hover(p, corpus, y, dense_ppl, settings) for p, y in zip(group, ys)]
            is_line = structure == "unstructured"
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines+markers" if is_line else "markers",
                    "name": method if is_line else f"{method} {structure}",
                    "legendgroup": method,
                    "x": xs,
                    "y": ys,
                    "text": hover,
                    "hovertemplate": "%{text}<extra></extra>",
                    "line": {"color": color, "width": 3},
                    "marker": {
                        "color": color,
                        "symbol": structure_symbol(structure),
                        "size": 9 if is_line else 15,
                        "line": {"color": "#FFFFFF" if is_line else "#000000", "width": 1 if is_line else 1.5},
                    },
                    "meta": {"method": method, "structure": structure},
                }
            )

    if dense_ppl is not None:
        right = max(max_x, 50.0)
        dense_hover = f"<b>dense model</b> (0 % sparsity)<br>perplexity {fmt_ppl(dense_ppl)} on {corpus_display_name(corpus)}"
        if settings:
            dense_hover += f"<br>{settings}"
        data.insert(
            0,
            {
                "type": "scatter",
                "mode": "lines",
                "name": f"dense ({fmt_ppl(dense_ppl)})",
                "x": [0.0, right],
                "y": [dense_ppl, dense_ppl],
                "text": [dense_hover, dense_hover],
                "hovertemplate": "%{text}<extra></extra>",
                "line": {"color": DENSE_COLOR, "width": 2, "dash": "dash"},
                "meta": {"role": "dense"},
            },
        )

    layout = base_layout(
        f"Perplexity vs sparsity · {corpus_display_name(corpus)}",
        xaxis=axis(SPARSITY_AXIS_TITLE, rangemode="tozero", ticksuffix=""),
        yaxis=axis(PERPLEXITY_AXIS_TITLE, type="log" if log_y else "linear",
                    **(log_ticks([y for trace in data for y in trace["y"]]) if log_y else {})),
        legend={"title": {"text": "method · structure"}, "bgcolor": "rgba(255,255,255,0.85)"},
    )
    if not data:
        layout["annotations"] = [
            {"text": f"No perplexity measured on '{corpus_display_name(corpus)}' yet.", "showarrow": False,
             "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5, "font": {"size": 18}}
        ]
    return {"data": data, "layout": layout}


# ---------------------------------------------------------------------------------------------------------
# Sensitivity maps (sensitivity.json)
# ---------------------------------------------------------------------------------------------------------


def _clean_matrix(values: Sequence[Sequence[Any]]) -> list[list[float | None]]:
    return [[finite(v) for v in row] for row in values]


def _size_text(size: Any) -> str | None:
    """A module size as given by the core: a weight count (int) or a shape ([out, in])."""
    if size is None:
        return None
    if isinstance(size, (list, tuple)):
        dims = [int(d) for d in size]
        count = math.prod(dims)
        return f"{'×'.join(str(d) for d in dims)} ({count:,} weights)"
    number = finite(size)
    return None if number is None else f"{int(number):,} weights"


#: Top margin (px) of charts whose title has a second, smaller line (the settings under the headline).
TWO_LINE_TITLE_MARGIN = 100


def _sens_title(sens: dict, what: str) -> str:
    """A short headline and, on a second smaller line, the settings: one line did not fit a half-width
    column and was cut off ("Sensitivity · wanda at 50 % sparsity · reconstr...")."""
    sparsity = finite(sens.get("sparsity"))
    at = f" at {_percent(sparsity):g} % sparsity" if sparsity is not None else ""
    return f"{what}<br><sup>{sens.get('method', '?')}{at} · {sens.get('metric', '?')}</sup>"


def _check_shape(sens: dict) -> None:
    """Reject a sensitivity dict whose `values` is not layers x modules (a broken or foreign file)."""
    layers, modules, values = sens.get("layers", []), sens.get("modules", []), sens.get("values", [])
    if len(values) != len(layers):
        raise ValueError(f"sensitivity map has {len(values)} rows of values but {len(layers)} layers")
    for i, row in enumerate(values):
        if len(row) != len(modules):
            raise ValueError(f"row {i} of the sensitivity map has {len(row)} values, expected one per module "
                             f"({len(modules)})")


def heatmap_figure(sens: dict) -> dict:
    """Heatmap of a sensitivity map: decoder layers (y, layer 0 at the top) x module kinds (x).

    `sens` is the CLI's sensitivity.json dict: ``layers`` (list of int), ``modules`` (e.g. q, k, v, o, gate,
    up, down), ``values`` (layers x modules, entries may be None), ``metric`` (exact, reconstruction,
    taylor), ``method``, ``sparsity`` (fraction), ``baseline_loss``, and optionally ``module_names`` and
    ``module_sizes`` (same shape as ``values``; a size is a weight count or a shape [out, in]).
    Missing values stay None (drawn as gaps, hover says "not computed"). The colour bar is titled with the
    metric's unit (``METRIC_UNITS``).
    """
    _check_shape(sens)
    layers = [int(layer) for layer in sens["layers"]]
    modules = [str(m) for m in sens["modules"]]
    z = _clean_matrix(sens["values"])
    unit = metric_unit(str(sens.get("metric", "")))
    names = sens.get("module_names")
    sizes = sens.get("module_sizes")

    hover: list[list[str]] = []
    for i, layer in enumerate(layers):
        row = []
        for j, module in enumerate(modules):
            lines = [f"<b>layer {layer} · {module}</b>", f"{unit}: {fmt(z[i][j])}"]
            if z[i][j] is not None and z[i][j] < 0:
                lines.append(NEGATIVE_NOTE)
            if names is not None and names[i][j]:
                lines.append(str(names[i][j]))
            size_text = _size_text(sizes[i][j]) if sizes is not None else None
            if size_text:
                lines.append(f"size {size_text}")
            row.append("<br>".join(lines))
        hover.append(row)

    trace = {
        "type": "heatmap",
        "x": modules,
        "y": layers,
        "z": z,
        "text": hover,
        "hovertemplate": "%{text}<extra></extra>",
        "hoverongaps": True,
        "colorscale": SEQUENTIAL_COLORSCALE,
        # The note on its own line: on one line with the unit it was longer than a short map's colour bar and cut.
        "colorbar": {"title": {"text": unit + ("<br>(below 0: see hover)" if _has_negative(z) else ""),
                               "side": "right"}, "thickness": 18},
        "xgap": 2,
        "ygap": 1,
        "meta": {"metric": sens.get("metric"), "method": sens.get("method"), "sparsity": sens.get("sparsity")},
    }
    height = max(420, min(1100, 120 + 24 * len(layers)))
    layout = base_layout(
        _sens_title(sens, "Sensitivity"),
        xaxis=axis(MODULE_AXIS_TITLE, type="category", showgrid=False, side="bottom"),
        yaxis=axis(LAYER_AXIS_TITLE, autorange="reversed", showgrid=False,
                    dtick=1 if len(layers) <= 32 else None),
        height=height,
        margin={"l": 80, "r": 30, "t": TWO_LINE_TITLE_MARGIN, "b": 70},
        plot_bgcolor="#D9D9D9",  # gaps (None) show as light grey, distinct from every Viridis colour
    )
    return {"data": [trace], "layout": layout}


#: What a negative sensitivity means, in the hover of each such cell (and the colour bar points to it).
NEGATIVE_NOTE = ("below 0: pruning this module alone lowered the probe loss, a difference within the probe's "
                 "noise; read it as 'not sensitive'")


def _has_negative(z: Sequence[Sequence[float | None]]) -> bool:
    return any(v is not None and v < 0 for row in z for v in row)


#: Short axis words for each metric's per-layer aggregate (the map's own "layer_aggregate" says it in full).
LAYER_AGGREGATE_SHORT = {"exact": "whole layer pruned", "reconstruction": "mean over the layer's modules",
                         "fisher": "sum over the layer's modules", "taylor": "sum over the layer's modules"}


def layer_bar_figure(sens: dict) -> dict:
    """Bar chart of a per-layer aggregate: ``sens["layer_values"]`` (the metric's own aggregate) if present, else
    the mean over the layer's module values (None ignored). The three most sensitive layers are drawn in
    vermillion, the others in blue; hover says which aggregate is shown.
    """
    _check_shape(sens)
    layers = [int(layer) for layer in sens["layers"]]
    unit = metric_unit(str(sens.get("metric", "")))
    if sens.get("layer_values") is not None:
        values = [finite(v) for v in sens["layer_values"]]
        if len(values) != len(layers):
            raise ValueError(f"layer_values has {len(values)} entries, expected one per layer ({len(layers)})")
        # Each metric has its own per-layer aggregate: exact prunes the whole layer, the estimates add up cells.
        how = LAYER_AGGREGATE_SHORT.get(str(sens.get("metric")), "sum over the layer's modules")
    else:
        values = [_mean(row) for row in sens["values"]]
        how = "mean over the layer's modules"
    ranked = sorted((v, i) for i, v in enumerate(values) if v is not None)
    top = {i for _, i in ranked[-3:]}
    colors = [PALETTE["vermillion"] if i in top else PALETTE["blue"] for i in range(len(layers))]
    hover = [f"<b>layer {layer}</b><br>{unit}: {fmt(v)}<br>({sens.get('layer_aggregate') or how})"
             for layer, v in zip(layers, values)]
    trace = {
        "type": "bar",
        "x": layers,
        "y": values,
        "marker": {"color": colors},
        "text": hover,
        "textposition": "none",
        "hovertemplate": "%{text}<extra></extra>",
        "name": how,
        "meta": {"aggregate": how},
    }
    layout = base_layout(
        _sens_title(sens, "Per-layer sensitivity"),
        xaxis=axis(LAYER_AXIS_TITLE, dtick=1 if len(layers) <= 32 else None, showgrid=False),
        yaxis=axis(f"{unit}<br>{how}"),  # two lines: one was longer than the chart's height and was cut
        showlegend=False,
        bargap=0.15,
        margin={"l": 100, "r": 30, "t": TWO_LINE_TITLE_MARGIN, "b": 70},
    )
    return {"data": [trace], "layout": layout}


_MAX_LAYER_LEGEND = 12  # more layers than this: a colour bar instead of one legend entry per layer


def _layer_color(position: int, count: int) -> str:
    """Colour for the `position`-th of `count` layers, sampled along Viridis (early dark, late yellow)."""
    if count <= 1:
        return _VIRIDIS_STOPS[0]
    t = position / (count - 1) * (len(_VIRIDIS_STOPS) - 1)
    lo = int(math.floor(t))
    hi = min(lo + 1, len(_VIRIDIS_STOPS) - 1)
    frac = t - lo
    a = [int(_VIRIDIS_STOPS[lo][k:k + 2], 16) for k in (1, 3, 5)]
    b = [int(_VIRIDIS_STOPS[hi][k:k + 2], 16) for k in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * frac):02X}" for x, y in zip(a, b))


def sensitivity_curves_figure(maps: list[dict], module: str) -> dict:
    """Sensitivity of one module kind against sparsity: one line per layer across several maps.

    `maps` are sensitivity dicts (as for ``heatmap_figure``) of the same metric and method at different
    sparsities; `module` is one of their ``modules`` (e.g. "down"). Layers are coloured along Viridis
    (layer 0 dark purple, last layer yellow); beyond 12 layers a "decoder layer" colour bar replaces the
    legend. Raises ValueError if the maps mix metrics or lack `module`.
    """
    if not maps:
        raise ValueError("sensitivity_curves_figure needs at least one sensitivity map")
    metrics = {m.get("metric") for m in maps}
    if len(metrics) > 1:
        raise ValueError(f"cannot draw maps of different metrics on one axis: {sorted(map(str, metrics))}")
    for m in maps:
        if module not in m.get("modules", []):
            raise ValueError(f"module '{module}' is not in a map's modules {m.get('modules')}")
    metric = str(maps[0].get("metric", ""))
    unit = metric_unit(metric)
    ordered = sorted(maps, key=lambda m: finite(m.get("sparsity")) or 0.0)
    layers = sorted({int(layer) for m in ordered for layer in m["layers"]})

    data = []
    for layer in layers:
        xs, ys, hover = [], [], []
        for m in ordered:
            if layer not in [int(x) for x in m["layers"]]:
                continue
            i = [int(x) for x in m["layers"]].index(layer)
            j = m["modules"].index(module)
            value = finite(m["values"][i][j])
            sparsity = _percent(finite(m.get("sparsity")) or 0.0)
            xs.append(sparsity)
            ys.append(value)
            hover.append(f"<b>layer {layer} · {module}</b><br>sparsity {sparsity:g} %<br>{unit}: {fmt(value)}")
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": f"layer {layer}",
                "x": xs,
                "y": ys,
                "text": hover,
                "hovertemplate": "%{text}<extra></extra>",
                # Coloured by layer index (not list position) so the colour bar below reads true for any subset.
                "line": {"color": _layer_color(layer - layers[0], layers[-1] - layers[0] + 1), "width": 2},
                "marker": {"size": 7},
                "meta": {"layer": layer, "module": module},
            }
        )
    use_colorbar = len(layers) > _MAX_LAYER_LEGEND
    if use_colorbar:
        # A 30-entry legend is unreadable: hide it and explain the line colours with a layer colour bar,
        # drawn by one invisible marker trace that carries the Viridis scale.
        for trace in data:
            trace["showlegend"] = False
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "x": [None],
                "y": [None],
                "showlegend": False,
                "hoverinfo": "skip",
                "marker": {
                    "color": [layers[0]],
                    "cmin": layers[0],
                    "cmax": layers[-1],
                    "colorscale": SEQUENTIAL_COLORSCALE,
                    "showscale": True,
                    "colorbar": {"title": {"text": "decoder layer", "side": "right"}, "thickness": 18},
                },
                "meta": {"role": "layer colour bar"},
            }
        )
    methods = sorted({str(m.get("method", "?")) for m in maps})
    layout = base_layout(
        two_line_title("Sensitivity against sparsity", f"{module} · {', '.join(methods)} · {metric}"),
        xaxis=axis(SPARSITY_AXIS_TITLE, rangemode="tozero"),
        yaxis=axis(unit),
        legend={"title": {"text": "layer"}},
        showlegend=not use_colorbar,
        margin={"l": 80, "r": 30, "t": TWO_LINE_TITLE_MARGIN, "b": 70},
    )
    return {"data": data, "layout": layout}


def proxy_scatter_figure(exact: dict, proxy: dict, spearman: float) -> dict:
    """Scatter of a cheap proxy metric (y) against the exact metric (x), one point per (layer, module).

    Cells are matched by (layer, module) label, so the two maps may list them in different orders; pairs
    with a None on either side are left out. Points are coloured by module kind; the title gives the
    Spearman rank correlation ρ (1 = the proxy ranks modules exactly like the exact metric).
    """
    _check_shape(exact)
    _check_shape(proxy)
    exact_cells = {
        (int(layer), str(module)): exact["values"][i][j]
        for i, layer in enumerate(exact["layers"]) for j, module in enumerate(exact["modules"])
    }
    proxy_metric = str(proxy.get("metric", "proxy"))
    exact_metric = str(exact.get("metric", "exact"))
    x_unit, y_unit = metric_unit(exact_metric), metric_unit(proxy_metric)

    by_module: dict[str, dict[str, list]] = {}
    for i, layer in enumerate(proxy["layers"]):
        for j, module in enumerate(proxy["modules"]):
            x = finite(exact_cells.get((int(layer), str(module))))
            y = finite(proxy["values"][i][j])
            if x is None or y is None:
                continue
            series = by_module.setdefault(str(module), {"x": [], "y": [], "text": []})
            series["x"].append(x)
            series["y"].append(y)
            series["text"].append(
                f"<b>layer {int(layer)} · {module}</b><br>{exact_metric}: {fmt(x)}<br>{proxy_metric}: {fmt(y)}"
            )

    data = []
    for k, (module, series) in enumerate(by_module.items()):
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": module,
                **series,
                "hovertemplate": "%{text}<extra></extra>",
                "marker": {"color": COLORWAY[k % len(COLORWAY)], "size": 10, "opacity": 0.85,
                           "line": {"color": "#FFFFFF", "width": 0.5}},
                "meta": {"module": module},
            }
        )
    rho = finite(spearman)
    rho_text = f"Spearman ρ = {rho:.2f}" if rho is not None else "Spearman ρ not available"
    layout = base_layout(
        f"{proxy_metric} vs {exact_metric}<br><sup>{rho_text}</sup>",  # two lines: it sits in a narrow column
        xaxis=axis(f"{exact_metric}: {x_unit}"),
        yaxis=axis(f"{proxy_metric}: {y_unit}"),
        legend={"title": {"text": "module"}},
        margin={"l": 80, "r": 30, "t": TWO_LINE_TITLE_MARGIN, "b": 70},
    )
    return {"data": data, "layout": layout}

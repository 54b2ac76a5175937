"""The frontier chart as a plain Plotly dict, for the dashboard (Summary, Frontier page) and the report.

`frontier_figure(frontier, corpus)`: size on disk (MB, log x) against perplexity on `corpus` (log y). Every family
of technique (`points.FAMILIES`: quantized, unstructured, N:M, structured, structured + quantized, pruned +
quantized) is its own trace with its own marker; the Pareto front (judged on the worst chosen corpus,
`pareto.pareto_front`) is drawn as a line through its points; the dense model (and a smaller dense model of the
same family, where one was measured) are baselines: a marker each and a dashed line at the dense perplexity. The
answer for the budget is ringed. Hover text carries the exact bytes, the format and the runtimes that load it,
the perplexity on every corpus and the point's note (the embedded model's Q4_1 origin beside a 4-bit figure).
Every number comes from the frontier dict (`build.build_frontier`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from pruning_core.data import corpus_display_name
from pruning_core.frontier.points import FAMILIES
from pruning_core.outputs.figures import (DENSE_COLOR, PALETTE, axis, base_layout, finite, legend_below,
                                         perplexity_change, two_line_title)
from pruning_core.units import format_bytes

#: Marker (plotly symbol, colour) per family: a shape for what was done, a colour for whether it was quantized.
FAMILY_MARKERS: dict[str, tuple[str, str]] = {
    "dense": ("star", DENSE_COLOR),
    "smaller dense": ("star-open", DENSE_COLOR),
    "quantized": ("circle", PALETTE["blue"]),
    "unstructured": ("circle-open", PALETTE["vermillion"]),
    "N:M": ("square-open", PALETTE["orange"]),
    "structured": ("diamond", PALETTE["reddish_purple"]),
    "structured + quantized": ("diamond-x", PALETTE["bluish_green"]),
    "pruned + quantized": ("triangle-up", PALETTE["sky_blue"]),
}
FRONT_COLOR = "#262730"
MB = 1e6


def _hover(row: Mapping[str, Any], dense_ppl: Mapping[str, float]) -> str:
    lines = [f"<b>{row['technique']}</b>",
             f"{format_bytes(row['bytes'])} on disk ({row['bytes']:,} bytes) as {row['format_words']}"]
    for corpus, value in row["ppl"].items():
        dense = dense_ppl.get(corpus)
        change = f" ({perplexity_change(value, dense)})" if dense else ""
        lines.append(f"perplexity on {corpus_display_name(corpus)}: {value:,.2f}{change}")
    if row.get("on_front"):
        lines.append("on the Pareto front")
    if row.get("note"):
        lines.append(f"<i>{_wrap(row['note'])}</i>")
    return "<br>".join(lines)


def _wrap(text: str, width: int = 70) -> str:
    """Hover text does not wrap by itself: break long notes at spaces."""
    out, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "<br>".join([*out, line] if line else out)


def frontier_figure(frontier: Mapping[str, Any], corpus: Optional[str] = None, title: Optional[str] = None) -> dict:
    """Size on disk against perplexity on `corpus` (default: the first judged corpus); see the module docstring."""
    corpora = list(frontier.get("corpora") or [])
    corpus = corpus or (corpora[0] if corpora else None)
    dense_ppl = frontier.get("dense_ppl") or {}
    rows = [r for r in frontier.get("points") or [] if finite((r.get("ppl") or {}).get(corpus)) is not None]
    data: list[dict] = []
    front = sorted((r for r in rows if r.get("on_front")), key=lambda r: r["bytes"])
    if front:
        data.append({"type": "scatter", "mode": "lines", "name": "Pareto front (no point is smaller and better)",
                     "x": [r["bytes"] / MB for r in front], "y": [r["ppl"][corpus] for r in front],
                     "line": {"color": FRONT_COLOR, "width": 2, "shape": "hv"}, "hoverinfo": "skip",
                     "meta": {"role": "front", "keys": [r["key"] for r in front]}})
    for family in FAMILIES:
        members = [r for r in rows if r["family"] == family]
        if not members:
            continue
        symbol, color = FAMILY_MARKERS[family]
        data.append({"type": "scatter", "mode": "markers", "name": family,
                     "x": [r["bytes"] / MB for r in members], "y": [r["ppl"][corpus] for r in members],
                     "text": [_hover(r, dense_ppl) for r in members], "hovertemplate": "%{text}<extra></extra>",
                     "marker": {"symbol": symbol, "color": color, "size": 16 if "dense" in family else 12,
                                "line": {"color": color, "width": 2}},
                     "meta": {"role": "family", "family": family, "keys": [r["key"] for r in members]}})
    answer = (frontier.get("answer") or {}).get("key")
    chosen = next((r for r in rows if r["key"] == answer), None)
    if chosen is not None and (frontier.get("answer") or {}).get("found"):
        data.append({"type": "scatter", "mode": "markers", "name": "the answer for your budget",
                     "x": [chosen["bytes"] / MB], "y": [chosen["ppl"][corpus]], "hoverinfo": "skip",
                     "marker": {"symbol": "circle-open", "size": 30, "color": PALETTE["vermillion"],
                                "line": {"width": 3, "color": PALETTE["vermillion"]}},
                     "meta": {"role": "answer", "key": chosen["key"]}})
    shapes = []
    dense = finite(dense_ppl.get(corpus))
    if dense is not None:
        shapes.append({"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y", "y0": dense, "y1": dense,
                       "line": {"color": DENSE_COLOR, "dash": "dash", "width": 1}})
    name = corpus_display_name(corpus) if corpus else "?"
    judged = ", ".join(corpus_display_name(c) for c in corpora)
    headline = f"Size on disk against perplexity on {name}"
    default = headline if len(corpora) <= 1 else two_line_title(headline, f"front judged on the worst of {judged}")
    layout = base_layout(title or default,
                         xaxis=axis("Size on disk (MB, log)", type="log"),
                         yaxis=axis(f"Perplexity on {name} (log)", type="log"),
                         shapes=shapes,
                         **legend_below(len(data), top=70 if len(corpora) <= 1 else 100, plot_height=380,
                                        per_row=2))
    return {"data": data, "layout": layout}

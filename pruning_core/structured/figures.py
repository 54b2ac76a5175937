"""Chart specifications (plain Plotly dicts) of structured pruning results, for the Structured page and the report.

- `tradeoff_figure(structured, sweep, corpus, axis)`: perplexity against the fraction of decoder parameters
  removed (axis="removed") or against the measured speed-up (axis="speedup"), structured points and a sweep's
  unstructured points on the same axes. An unstructured point removes no parameter (its zeros are stored and
  multiplied), so on the "removed" axis it sits at its sparsity with an open marker and a hover saying the
  weights are zeroed, not removed; on the speed axis it sits at 1.0x, marked "not measured: dense kernels
  multiply the zeros", unless the sweep point carries a measured speed-up.
- `widths_figure(point, dense_widths)`: per decoder layer, the heads and MLP channels kept, as a fraction of the
  dense layer's.
Every number comes from the results passed in (`structured.run.run_structured`'s dict, a sweep's results).
"""

from __future__ import annotations

from typing import Optional

from pruning_core.data import corpus_display_name

# The figure base's `axis` under another name: `tradeoff_figure`'s own `axis` argument would hide it.
from pruning_core.outputs.figures import axis as titled_axis
from pruning_core.outputs.figures import (
    TWO_LINE_TITLE_MARGIN,
    base_layout,
    finite,
    legend_below,
    method_color,
    two_line_title,
)

STRUCTURED_COLOR = "#7E3AF2"
AXES = {"removed": "Decoder parameters removed (%)", "speedup": "Measured speed-up (pruned / dense tokens/s)"}


def speed_phase(structured: dict, dtype: str = "float32", phase: Optional[str] = None) -> Optional[str]:
    """The speed phase the speed axis shows: `phase` if measured, else decode at batch 1, else the first one."""
    for point in structured.get("points") or []:
        ratios = ((point.get("speed") or {}).get("ratios") or {}).get(dtype) or {}
        if not ratios:
            continue
        if phase in ratios:
            return phase
        return "decode at batch 1" if "decode at batch 1" in ratios else next(iter(ratios))
    return None


def _structured_x(point: dict, axis: str, dtype: str, phase: Optional[str]) -> Optional[float]:
    if axis == "removed":
        return 100.0 * float(point["measured_ratio"])
    ratios = ((point.get("speed") or {}).get("ratios") or {}).get(dtype) or {}
    return finite(ratios.get(phase)) if phase else None


def tradeoff_figure(structured: dict, sweep: Optional[dict], corpus: str, axis: str = "removed",
                    dtype: str = "float32", phase: Optional[str] = None) -> dict:
    """Perplexity on `corpus` against parameters removed or measured speed-up (see the module docstring)."""
    if axis not in AXES:
        raise ValueError(f"axis must be one of {list(AXES)}")
    phase = speed_phase(structured, dtype, phase) if axis == "speedup" else None
    dense = finite((structured.get("dense_ppl") or {}).get(corpus))
    data = []
    xs, ys, texts = [], [], []
    for point in structured.get("points") or []:
        x, y = _structured_x(point, axis, dtype, phase), finite((point.get("ppl") or {}).get(corpus))
        if x is None or y is None:
            continue
        xs.append(x), ys.append(y)
        config = point.get("config") or {}
        compensated = "compensated" if config.get("compensate") else "not compensated"
        texts.append(f"structured {', '.join(config.get('units') or [])}, {config.get('score')} scores, "
                     f"{compensated}<br>{100 * point['measured_ratio']:.1f} % of decoder parameters removed "
                     f"({point['parameters']['model_after']:,} parameters left)<br>perplexity {y:,.2f}"
                     + (f"<br>{phase}: {x:.2f}x ({dtype})" if axis == "speedup" else ""))
    data.append({"type": "scatter", "mode": "lines+markers", "name": "structured (heads / channels removed)",
                 "x": xs, "y": ys, "text": texts, "hovertemplate": "%{text}<extra></extra>",
                 "marker": {"color": STRUCTURED_COLOR, "size": 10, "symbol": "diamond"},
                 "line": {"color": STRUCTURED_COLOR}, "meta": {"role": "structured"}})
    for method, points in _unstructured(sweep, corpus).items():
        ux, uy, utexts = [], [], []
        for point in points:
            y = finite(point["ppl"].get(corpus))
            measured = finite(((point.get("speed") or {}).get("ratios") or {}).get(phase)) if phase else None
            x = 100.0 * float(point["sparsity"]) if axis == "removed" else (measured if measured else 1.0)
            speed_words = (f"measured speed-up {measured:.2f}x" if measured else
                           "speed-up not measured: dense kernels multiply the zeros, so expect 1.0x")
            ux.append(x), uy.append(y)
            utexts.append(f"{method} unstructured, {100 * float(point['sparsity']):.1f} % of weights zeroed "
                          f"(stored and multiplied, not removed)<br>perplexity {y:,.2f}<br>{speed_words}")
        data.append({"type": "scatter", "mode": "lines+markers" if axis == "removed" else "markers",
                     "name": f"{method} unstructured (zeros)", "x": ux, "y": uy, "text": utexts,
                     "hovertemplate": "%{text}<extra></extra>",
                     "marker": {"color": method_color(method), "size": 9, "symbol": "circle-open"},
                     "line": {"color": method_color(method), "dash": "dot"},
                     "meta": {"role": "unstructured", "method": method,
                              "speed": "measured" if axis == "speedup" and any(
                                  ((p.get("speed") or {}).get("ratios") or {}).get(phase) for p in points)
                              else "not measured"}})
    if dense is not None:
        data.append({"type": "scatter", "mode": "markers", "name": "dense",
                     "x": [0.0 if axis == "removed" else 1.0], "y": [dense],
                     "text": [f"dense model, perplexity {dense:,.2f}"], "hovertemplate": "%{text}<extra></extra>",
                     "marker": {"color": "#262730", "size": 11, "symbol": "star"}, "meta": {"role": "dense"}})
    # A short headline and the corpus (a file name can be long) and speed phase on a second line.
    title = two_line_title("Perplexity against parameters removed" if axis == "removed" else
                           "Perplexity against measured speed-up",
                           corpus_display_name(corpus) if axis == "removed" else
                           f"{corpus_display_name(corpus)} · {phase or 'not measured'} · {dtype}")
    layout = base_layout(title, xaxis=titled_axis(AXES[axis]),
                         yaxis=titled_axis("Perplexity (lower is better)"),
                         **legend_below(len(data), top=TWO_LINE_TITLE_MARGIN))
    return {"data": data, "layout": layout}


def _unstructured(sweep: Optional[dict], corpus: str) -> dict[str, list[dict]]:
    """{method: unstructured sweep points with a perplexity on `corpus`, by sparsity}."""
    out: dict[str, list[dict]] = {}
    for point in (sweep or {}).get("points") or []:
        if point.get("structure", "unstructured") != "unstructured" or str(point.get("allocation") or "uniform") \
                != "uniform" or finite((point.get("ppl") or {}).get(corpus)) is None:
            continue
        out.setdefault(point["method"], []).append(point)
    return {m: sorted(points, key=lambda p: float(p["sparsity"])) for m, points in out.items()}


def widths_figure(point: dict, dense_widths: dict) -> dict:
    """Per remaining decoder layer, the kept fraction of query heads and of MLP channels (grouped bars).

    The x axis holds the layer indices as numbers (the axis title says "decoder layer"): labels such as "layer 17"
    did not fit under 30 bars and were cut to "layer". The counts ("12 of 16") are in the hover, not in the bars,
    where they were unreadable. dense_widths: {"heads", "channels"} of a dense layer."""
    layers = list(range(len(point.get("widths") or [])))
    kept_layers = point.get("kept_layers") or layers
    indices = [kept_layers[i] if i < len(kept_layers) else i for i in layers]
    data = []
    for key, name, color in (("heads", "query heads kept", "#1F77B4"), ("channels", "MLP channels kept", "#FF7F0E")):
        values = [100.0 * w[key] / dense_widths[key] for w in point["widths"]]
        data.append({"type": "bar", "name": name, "x": [str(i) for i in indices], "y": values,
                     "marker": {"color": color}, "textposition": "none",
                     "text": [f"{w[key]:,} of {dense_widths[key]:,}" for w in point["widths"]],
                     "hovertemplate": "layer %{x}: %{text}<extra>" + name + "</extra>"})
    title = two_line_title("Widths per layer",
                           f"{100 * point['measured_ratio']:.1f} % of decoder parameters removed")
    layout = base_layout(title, barmode="group",
                         xaxis=titled_axis("Decoder layer (index, 0 = first)", type="category", tickangle=0),
                         yaxis=titled_axis("Kept (% of the dense layer)", range=[0, 105]),
                         **legend_below(len(data), top=TWO_LINE_TITLE_MARGIN))
    return {"data": data, "layout": layout}

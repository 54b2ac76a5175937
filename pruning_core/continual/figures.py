"""Chart specifications (plain Plotly dicts) and sentences of a continual-pruning run, for the Continual page and
the report.

Input: `continual.run.run_continual`'s result dict (R matrix, BWT, FWT, average, mask overlap per strategy).
- `r_matrix_figure(result, strategy)`: R as a heatmap, rows = after step t, columns = domain i, the perplexity
  written in every cell, the diagonal R[i][i] (each domain right after its own step) outlined. Every strategy's
  heatmap shares one colour range, so the tabs compare by colour too.
- `transfer_figure(result)`: BWT (perplexity points; positive = forgetting) and the average perplexity after the
  last step, one bar per strategy in two panels side by side (their units differ: a difference, a level).
- `overlap_figure(result)`: Jaccard overlap of the pruned weights between consecutive steps, per strategy.
- `strategy_rows(result)` / `answer_sentence(result)`: the strategies sorted by forgetting and the one sentence
  "X forgets least ..." computed from the result, so the page and the report say the same.
Every number comes from the result passed in; perplexity has no unit.
"""

from __future__ import annotations

from typing import Optional

from pruning_core.data import corpus_display_name
from pruning_core.outputs.figures import (
    SEQUENTIAL_COLORSCALE,
    axis,
    base_layout,
    finite,
    fmt,
    legend_below,
)

#: The sign convention said beside every BWT figure (DESIGN "Continual pruning").
BWT_AXIS_TITLE = "BWT (positive = forgetting)"
AVERAGE_AXIS_TITLE = "Average perplexity, last step"
OVERLAP_AXIS_TITLE = "Overlap (Jaccard; 1 = same mask)"
#: One colour per registered strategy (joint, the non-continual reference, in grey).
STRATEGY_COLORS = {"latest": "#D62728", "sequential": "#FF7F0E", "accumulated": "#1F77B4", "copal": "#2CA02C",
                   "joint": "#7F7F7F"}
_OTHER_COLORS = ("#9467BD", "#8C564B", "#E377C2", "#17BECF")


def strategy_color(name: str, position: int = 0) -> str:
    """The colour of a strategy in every continual chart (unknown names cycle through spare colours)."""
    return STRATEGY_COLORS.get(name, _OTHER_COLORS[position % len(_OTHER_COLORS)])


def domain_labels(result: dict, labels: Optional[dict] = None) -> list[str]:
    """Display names of the result's domains in order: `labels[name]` if given, else `data.corpus_display_name`
    (an embedded corpus's name, a file's own name)."""
    labels = labels or {}
    return [labels.get(d) or corpus_display_name(d) for d in result["domains"]]


def strategy_label(result: dict, name: str, short: bool = False) -> str:
    """A strategy's name, with "(reference, not continual)" ("(reference)" when `short`) for one that saw every
    domain at once (joint)."""
    if result["strategies"][name].get("continual", True):
        return name
    return f"{name} (reference)" if short else f"{name} (reference, not continual)"


def _range(result: dict) -> tuple[Optional[float], Optional[float]]:
    values = [v for figures in result["strategies"].values() for row in figures["R"] for v in map(finite, row)
              if v is not None]
    return (min(values), max(values)) if values else (None, None)


def r_matrix_figure(result: dict, strategy: str, labels: Optional[dict] = None) -> dict:
    """The R matrix of `strategy` as a heatmap (see the module docstring); meta names the diagonal cells."""
    figures = result["strategies"][strategy]
    names = domain_labels(result, labels)
    T = len(names)
    rows = [f"after step {t + 1} ({names[t]})" for t in range(T)]
    z = [[finite(v) for v in row] for row in figures["R"]]
    dense = result.get("dense_ppl") or {}
    text, hover = [], []
    for t in range(T):
        text.append([fmt(v) if v is not None else "" for v in z[t]])
        line = []
        for i in range(T):
            when = ("right after its own step" if i == t else "before it arrived" if i > t else
                    f"{t - i} step{'s' if t - i > 1 else ''} after its own")
            d = finite(dense.get(result["domains"][i]))
            line.append(f"<b>{names[i]}</b> after step {t + 1}: perplexity {fmt(z[t][i])}<br>{when}"
                        + (f"<br>dense model: {fmt(d)}" if d is not None else ""))
        hover.append(line)
    zmin, zmax = _range(result)
    trace = {"type": "heatmap", "x": names, "y": rows, "z": z, "text": text, "customdata": hover,
             "texttemplate": "%{text}", "hovertemplate": "%{customdata}<extra></extra>",
             "colorscale": SEQUENTIAL_COLORSCALE, "zmin": zmin, "zmax": zmax, "xgap": 2, "ygap": 2,
             "colorbar": {"title": {"text": "perplexity", "side": "right"}, "thickness": 18},
             "meta": {"strategy": strategy, "diagonal": [z[i][i] for i in range(T)]}}
    # The diagonal (each domain right after its own step) is BWT's baseline: outlined so the eye finds it, in a
    # colour Viridis never takes.
    shapes = [{"type": "rect", "xref": "x", "yref": "y", "x0": i - 0.5, "x1": i + 0.5, "y0": i - 0.5,
               "y1": i + 0.5, "line": {"color": "#E8175D", "width": 4}} for i in range(T)]
    bwt = finite(figures.get("bwt"))
    title = (f"R matrix of {strategy_label(result, strategy)}: BWT {bwt:+.2f}" if bwt is not None else
             f"R matrix of {strategy_label(result, strategy)}")
    layout = base_layout(title, shapes=shapes, height=max(360, 140 + 70 * T),
                          xaxis=axis("Evaluated on domain (perplexity; outlined: right after its own step)",
                                      type="category", showgrid=False, side="bottom"),
                          yaxis=axis("Model after step", type="category", autorange="reversed", showgrid=False),
                          margin={"l": 200, "r": 30, "t": 70, "b": 80})
    return {"data": [trace], "layout": layout}


def transfer_figure(result: dict) -> dict:
    """BWT and average perplexity after the last step per strategy: two bar panels side by side; the average
    panel carries the dense model's average as a dashed line."""
    names = list(result["strategies"])
    labels = [strategy_label(result, n, short=True) for n in names]
    colors = [strategy_color(n, k) for k, n in enumerate(names)]
    bwt = [finite(result["strategies"][n].get("bwt")) for n in names]
    average = [finite(result["strategies"][n].get("average")) for n in names]
    data = [{"type": "bar", "name": "BWT", "x": labels, "y": bwt, "xaxis": "x", "yaxis": "y",
             "marker": {"color": colors}, "text": [f"{v:+.2f}" if v is not None else "" for v in bwt],
             "textposition": "outside", "hovertemplate": "%{x}: BWT %{y:+.3f}<extra></extra>",
             "showlegend": False, "meta": {"role": "bwt"}},
            {"type": "bar", "name": "average perplexity", "x": labels, "y": average, "xaxis": "x2", "yaxis": "y2",
             "marker": {"color": colors}, "text": [fmt(v) if v is not None else "" for v in average],
             "textposition": "outside", "hovertemplate": "%{x}: average perplexity %{y:.3f}<extra></extra>",
             "showlegend": False, "meta": {"role": "average"}}]
    shapes = []
    dense = [finite(v) for v in (result.get("dense_ppl") or {}).values()]
    if dense and all(v is not None for v in dense):
        level = sum(dense) / len(dense)
        shapes.append({"type": "line", "xref": "x2 domain", "yref": "y2", "x0": 0, "x1": 1, "y0": level,
                       "y1": level, "line": {"color": "#262730", "dash": "dash", "width": 2}})
        data.append({"type": "scatter", "mode": "lines", "name": f"dense model: {fmt(level)}", "x": [None],
                     "y": [None], "xaxis": "x2", "yaxis": "y2", "line": {"color": "#262730", "dash": "dash"},
                     "meta": {"role": "dense", "value": level}})
    layout = base_layout("Forgetting (BWT, perplexity points) and average perplexity after the last step",
                          # Labels slanted up to the left: their ends sit at the bars, so the last one is not cut
                          # at the chart's right edge; the legend hangs below them (legend_below), never over them.
                          xaxis=axis("", domain=[0.0, 0.45], type="category", tickangle=-30),
                          yaxis=axis(BWT_AXIS_TITLE, zeroline=True, zerolinecolor="#262730"),
                          xaxis2=axis("", domain=[0.55, 1.0], type="category", tickangle=-30),
                          yaxis2=axis(AVERAGE_AXIS_TITLE, anchor="x2", rangemode="tozero"),
                          shapes=shapes, **legend_below(1, axis_band=130))
    return {"data": data, "layout": layout}


def overlap_figure(result: dict) -> dict:
    """Mask overlap between consecutive steps, one line per strategy (x = the step the mask moved to)."""
    names = domain_labels(result)
    steps = [f"step {t + 1} ({names[t]})" for t in range(1, len(names))]
    data = []
    for k, (name, figures) in enumerate(result["strategies"].items()):
        values = [finite(v) for v in figures.get("overlap") or []]
        data.append({"type": "scatter", "mode": "lines+markers", "name": strategy_label(result, name),
                     "x": steps[:len(values)], "y": values,
                     "line": {"color": strategy_color(name, k), "dash": "solid" if figures.get("continual", True)
                              else "dot"}, "marker": {"size": 10},
                     "hovertemplate": f"{name}, %{{x}}: overlap %{{y:.3f}}<extra></extra>", "meta": {"strategy": name}})
    layout = base_layout("Mask overlap between consecutive steps",
                          xaxis=axis("Step (the mask after it against the one before)", type="category"),
                          yaxis=axis(OVERLAP_AXIS_TITLE, range=[0, 1.05]), height=420,
                          legend={"orientation": "v", "x": 1.02, "y": 1.0})
    return {"data": data, "layout": layout}


def signed(value: Optional[float], digits: int = 2) -> str:
    """A BWT/FWT as text with its sign ("+1.25"), "–" when undefined."""
    value = finite(value)
    return "–" if value is None else f"{value:+.{digits}f}"


_signed = signed


def strategy_rows(result: dict) -> list[dict]:
    """One row per strategy, least forgetting first (continual strategies before the joint reference):
    {"strategy", "continual", "bwt", "average", "fwt", "rule"} (numbers as floats, None when undefined)."""
    rows = [{"strategy": name, "continual": bool(f.get("continual", True)), "bwt": finite(f.get("bwt")),
             "average": finite(f.get("average")), "fwt": finite(f.get("fwt")), "rule": f.get("rule") or ""}
            for name, f in result["strategies"].items()]
    big = float("inf")
    return sorted(rows, key=lambda r: (not r["continual"], big if r["bwt"] is None else r["bwt"]))


def answer_sentence(result: dict) -> str:
    """"X forgets least: BWT ... (positive = forgetting) ...": which continual strategy forgets least, from the
    measured BWTs, with the runner-up, its average and the joint reference when present."""
    rows = strategy_rows(result)
    continual = [r for r in rows if r["continual"] and r["bwt"] is not None]
    reference = next((r for r in rows if not r["continual"] and r["average"] is not None), None)
    if len(result["domains"]) < 2:
        return ("With one domain nothing can be forgotten: BWT needs at least two domains (positive = "
                "forgetting). Add domains to the sequence.")
    if not continual:
        return "No continual strategy was run: only the reference (joint) has figures, and it forgets nothing."
    best = continual[0]
    tied = [r["strategy"] for r in continual if r["bwt"] == best["bwt"]]
    who = " and ".join(tied) + (" forget" if len(tied) > 1 else " forgets")
    sentence = (f"{who} least: BWT {_signed(best['bwt'])} perplexity points (positive = forgetting), average "
                f"perplexity {fmt(best['average'])} after the last step")
    others = [r for r in continual if r["strategy"] not in tied]
    if others:
        worst = others[-1]
        sentence += f"; {worst['strategy']} forgets most (BWT {_signed(worst['bwt'])}, average {fmt(worst['average'])})"
    if reference is not None:
        sentence += (f"; {reference['strategy']}, which sees every domain at once (not continual), averages "
                     f"{fmt(reference['average'])}")
    return sentence + "."


#: The report's table of strategies (its BWT column states the sign convention).
SUMMARY_HEADERS = ["strategy", "BWT (positive = forgetting)", "FWT", "average perplexity after the last step", "rule"]


def summary_table(result: dict) -> list[list[str]]:
    """The report's rows of `SUMMARY_HEADERS`, least forgetting first (`strategy_rows`)."""
    return [[r["strategy"] + ("" if r["continual"] else " (reference, not continual)"), _signed(r["bwt"]),
             _signed(r["fwt"]), "–" if r["average"] is None else fmt(r["average"]), r["rule"]]
            for r in strategy_rows(result)]


def r_table(result: dict, strategy: str, labels: Optional[dict] = None) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of `strategy`'s R matrix as a table: one row per step ("after step t (domain)"), one column
    per domain, the dense model's perplexity as the first row."""
    names = domain_labels(result, labels)
    dense = result.get("dense_ppl") or {}
    rows = [["dense model", *[fmt(finite(dense.get(d))) if finite(dense.get(d)) is not None else "–"
                              for d in result["domains"]]]]
    rows += [[f"after step {t + 1} ({names[t]})", *[fmt(finite(v)) for v in row]]
             for t, row in enumerate(result["strategies"][strategy]["R"])]
    return ["perplexity on", *names], rows


def continual_sentences(result: dict) -> list[str]:
    """The report summary's sentences: the sequence, which strategy forgets least, and the BWT convention."""
    names = domain_labels(result)
    return [f"The domains arrived in this order: {' → '.join(names)}; every strategy pruned at each step "
            f"({', '.join(result['strategies'])}).", answer_sentence(result),
            (result.get("bwt_note") or "BWT: positive = forgetting") + "."]

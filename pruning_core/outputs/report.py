"""The evaluation report of one pruning setting: HTML (self-contained), Markdown, JSON, and PDF.

`build_report(data, out_dir)` takes one plain dict (see `build_report`) and writes ``report.html``,
``report.md``, ``report.json`` and, on request, ``report.pdf``. The HTML opens offline: plotly.js is read
from the installed plotly package's file (never imported: the core stays free of plotly) and inlined, and
the charts are the figure dicts of `pruning_core.outputs.figures`, the same the dashboard shows.

Safety: everything user-provided (model names, prompts, generations, file names, task names) is escaped
with `html.escape`; JSON placed inside ``<script>`` has every ``</`` written as ``<\\/`` so no string can
close the script element. PDF: printed by headless Chromium (`print_pdf`).

Helpers used by the CLI and the dashboard to fill `data`: `per_layer_table`, `summary_sentences`;
`allocation_summary` / `allocation_sentences` / `plan_figure` say where the zeros are (the plan, its allocator,
its global and per-layer sparsity by parameters). Sizes,
the speed sentence and the sample generations come from `pruning_core.claims`, the one home of every claim
about gains, so the report words a setting exactly as the What-if and Summary pages do.
"""

from __future__ import annotations

import html
import importlib.util
import json
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pruning_core import claims
from pruning_core.errors import ConfigError, PruneScopeError

REPORT_FORMAT_VERSION = 1
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


# ----------------------------------------------------------------------------------------- data helpers

def per_layer_table(adapter, per_module_sparsity: Mapping[str, float], n_layers: int) -> dict:
    """Layers x module kinds table of measured sparsity (fraction; None where a module was not pruned)."""
    kinds = adapter.module_kinds
    rows = []
    for layer in range(n_layers):
        values = [per_module_sparsity.get(adapter.qualified_name(layer, kind)) for kind in kinds]
        rows.append({"layer": layer, "values": values})
    return {"modules": kinds, "rows": rows, "unit": "fraction of zero weights"}


def allocation_summary(data: Mapping[str, Any]) -> dict | None:
    """Where the zeros are: the setting's sparsity plan as the report shows it, or None without any sparsity.

    Returns {"allocator", "edited_from", "settings" (allocator options), "structure", "uniform" (one value
    everywhere), "value" (that value, a fraction; None for a varied plan), "global_sparsity" (zeros / weights of
    every planned linear, a fraction; None when it cannot be counted), "kinds", "rows": [{"layer", "mean" (the
    layer's sparsity by parameters; None when unknown), "values" (per kind)}], "by_parameters" (whether every
    mean is known), "module_sizes" (layers x kinds weight counts, or None)}.

    The plan is the setting's "plan" (`SparsityPlan.to_dict()`), else its per-layer overrides ("layer_sparsity"
    over "sparsity"; kinds and layer count from "per_layer"), else the uniform "sparsity". An N:M plan is shown
    as it is applied (0 = dense, anything else the structure's sparsity). Figures by parameters come from
    `SparsityPlan.global_sparsity` / `layer_mean` with ``data["module_sizes"]`` (sizes[layer][kind] = weight
    count, `allocation.plan.module_sizes`), else with the shapes the sensitivity map records for every layer.
    Without sizes, the global figure of an unstructured plan is the
    setting's target (`PruneConfig.with_plan` sets it to the plan's global sparsity by parameters) and a layer's
    mean is known only where all its modules share one value.
    """
    from pruning_core.plan import SparsityPlan
    from pruning_core.masks import parse_structure

    s = data.get("setting") or {}
    structure = str(s.get("structure") or "unstructured")
    if structure == claims.STRUCTURED:  # removed units, not zeros: the widths table says where
        return None
    nm = parse_structure(structure)
    target = nm.sparsity if nm.is_nm else s.get("sparsity")
    per_layer = data.get("per_layer") or {}
    if s.get("plan"):
        plan = SparsityPlan.from_dict(s["plan"])
    elif s.get("layer_sparsity") and target is not None:
        kinds = tuple(per_layer.get("modules") or ("all modules",))
        overrides = {int(k): float(v) for k, v in s["layer_sparsity"].items()}
        layers = max(len(per_layer.get("rows") or ()), max(overrides) + 1)
        plan = SparsityPlan.with_overrides(layers, kinds, float(target), overrides)
    elif target is not None:
        return {"allocator": str(s.get("allocator") or "uniform"), "edited_from": None, "settings": {},
                "structure": structure, "uniform": True, "value": float(target), "global_sparsity": float(target),
                "kinds": [], "rows": [], "by_parameters": True, "module_sizes": None}
    else:
        return None
    settings = dict(plan.settings)
    edited_from = settings.pop("edited_from", None)
    applied = plan.for_structure(nm.sparsity) if nm.is_nm else plan
    sizes = _module_sizes(data, applied.kinds, applied.layers)
    if sizes is not None:
        global_sparsity = applied.global_sparsity(sizes)
        means = [applied.layer_mean(i, sizes[i]) for i in range(applied.layers)]
    else:
        global_sparsity = float(s["sparsity"]) if not nm.is_nm and s.get("sparsity") is not None else None
        if applied.is_uniform:
            global_sparsity = applied.values[0][0] if applied.layers else global_sparsity
        means = [row[0] if len(set(row)) == 1 else None for row in applied.values]
    return {"allocator": plan.allocator, "edited_from": edited_from, "settings": settings, "structure": structure,
            "uniform": applied.is_uniform, "value": applied.values[0][0] if applied.is_uniform and applied.layers
            else None, "global_sparsity": global_sparsity, "kinds": list(applied.kinds),
            "rows": [{"layer": i, "mean": means[i], "values": list(row)} for i, row in enumerate(applied.values)],
            "by_parameters": all(m is not None for m in means),
            "module_sizes": [[int(row[k]) for k in applied.kinds] for row in sizes] if sizes is not None else None}


def _module_sizes(data: Mapping[str, Any], kinds: Sequence[str], layers: int) -> list[dict] | None:
    """sizes[layer][kind] = weight count: ``data["module_sizes"]``, else the shapes [out, in] the sensitivity map
    records for every layer and kind (the export's heatmap), else None. Sizes that do not fit the plan (another
    model) are not used."""
    sizes = data.get("module_sizes")
    if sizes is None:
        sens = data.get("sensitivity") or {}
        shapes, modules = sens.get("module_sizes"), list(sens.get("modules") or ())
        if shapes is None or [int(x) for x in sens.get("layers") or ()] != list(range(layers)):
            return None
        try:
            sizes = [{kind: math.prod(int(d) for d in size) if isinstance(size, (list, tuple)) else int(size)
                      for kind, size in zip(modules, row)} for row in shapes]
        except (TypeError, ValueError):
            return None
    if len(sizes) != layers or any(set(kinds) - set(row) for row in sizes):
        return None
    return sizes


def allocation_sentences(summary: Mapping[str, Any]) -> list[str]:
    """The "Where the zeros are" section in plain words (`allocation_summary`'s dict)."""
    who = summary["allocator"] + (f" (edited from {summary['edited_from']})" if summary.get("edited_from") else "")
    nm = f" ({summary['structure']})" if summary["structure"] != "unstructured" else ""
    if summary["uniform"]:
        return [f"{who}: every module at {_pct(summary['value'])}{nm}."]
    options = ", ".join(f"{k} = {v}" for k, v in (summary.get("settings") or {}).items())
    sentences = [f"Allocator: {who}" + (f", with {options}" if options else "") + ".",
                 f"Global sparsity {_pct(summary['global_sparsity'], 2)}{nm}, counted over parameters "
                 "(zeros / weights of all pruned linears, so a large MLP projection weighs more than a small "
                 "attention one)."]
    known = [r for r in summary["rows"] if r["mean"] is not None]
    if known:
        low = min(known, key=lambda r: r["mean"])
        high = max(known, key=lambda r: r["mean"])
        sentences.append(f"Per layer, by parameters: from {_pct(low['mean'])} (layer {low['layer']}) to "
                         f"{_pct(high['mean'])} (layer {high['layer']}).")
    if not summary["by_parameters"]:
        sentences.append("This report holds no module sizes, so a layer whose modules differ has no mean by "
                         "parameters (–); the per-module values are exact.")
    return sentences


def _allocation_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    return [[r["layer"], _pct(r["mean"]), *[_pct(v) for v in r["values"]]] for r in summary["rows"]]


def _pct(fraction: float | None, digits: int = 1) -> str:
    return "–" if fraction is None else f"{100 * fraction:.{digits}f} %"


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def summary_sentences(data: Mapping[str, Any]) -> list[str]:
    """The report's top summary in plain words: setting, quality change, size change, speed."""
    s = data.get("setting", {})
    sparsity = s.get("measured_sparsity", s.get("sparsity"))
    structure = s.get("structure", "unstructured")
    sentences = [(f"{s.get('model', 'The model')} was pruned with {s.get('method', '?')} to "
                  f"{_pct(sparsity)} sparsity ({structure}) of its decoder linear layers.")]
    if data.get("structured"):
        sentences = structured_sentences(s, data["structured"])
    dense = (data.get("ppl") or {}).get("dense") or {}
    pruned = (data.get("ppl") or {}).get("pruned") or {}
    for corpus, before in dense.items():
        after = pruned.get(corpus)
        if before and after:
            change = 100.0 * (after / before - 1.0)
            word = "worse" if change > 0 else "better"
            sentences.append(f"Perplexity on {corpus} went from {before:.2f} to {after:.2f} "
                             f"({abs(change):.1f} % {word}; lower is better).")
    if s.get("propagation_note"):  # which statistics made the mask: a Curves point may use the other mode
        sentences.append(f"The mask ({s.get('mask_source', 'pruned for this export')}) was made with "
                         f"{s.get('propagation')} propagation: {s['propagation_note']}.")
    sizes = claims.sizes_from_record(data.get("sizes"), structure)
    if sizes:
        sentences.append(claims.size_sentence(sizes))
    if data.get("speed_note"):
        sentences.append(data["speed_note"])
    if data.get("unstructured_note"):  # a structured report: the measured speed beside unstructured's honest none
        sentences.append(unstructured_contrast(data["unstructured_note"]))
    if data.get("recovery"):  # a recovery report: what the adapter won back, in the Recovery page's words
        from pruning_core.recovery.figures import recovery_sentences

        sentences += recovery_sentences(data["recovery"])
    if data.get("continual"):  # a continual report: the sequence and which strategy forgets least
        from pruning_core.continual.figures import continual_sentences

        sentences += continual_sentences(data["continual"])
    return sentences


def unstructured_contrast(note: str) -> str:
    """A structured report's comparison line: what unstructured pruning (zeros kept) gains in speed, in the claims
    module's words (`claims.speed_sentence("unstructured")`)."""
    return f"Unstructured pruning, by contrast, zeroes weights without removing them: {note}"


def structured_sentences(setting: Mapping[str, Any], structured: Mapping[str, Any]) -> list[str]:
    """What a structured setting removed, in parameters (DESIGN "Structured ratio"), and the saved file's size.

    structured: {"measured_ratio", "parameters" (`ParameterCounts` as a dict), "file_bytes" (or None), "speed"
    (`structured.speed.measure_speed`'s dict or None), "widths", "dense_widths", "reload" (or None)}."""
    params = structured["parameters"]
    model_removed = 1.0 - params["model_after"] / max(params["model_before"], 1)
    out = [(f"{setting.get('model', 'The model')} was pruned structurally ({setting.get('method', '?')}): "
            f"{_pct(structured['measured_ratio'])} of its decoder-layer parameters were removed, so the whole "
            f"model went from {params['model_before']:,} to {params['model_after']:,} parameters "
            f"({_pct(model_removed)} of the model, embeddings and LM head included).")]
    if structured.get("file_bytes"):
        out.append(f"The saved model's weight files take {claims.format_bytes(structured['file_bytes'])} "
                   f"({structured.get('file_dtype', 'float32')} as saved).")
    reload = structured.get("reload")
    if reload:
        out.append(f"Reloaded from its folder, it gives the same perplexity to {reload['max_relative_gap']:.1e} "
                   "relative" + (" with plain transformers." if reload.get("loadable_with_transformers") else
                                 f" ({reload.get('load_note', '')})."))
    return out


def _structured_speed_rows(structured: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for dtype, table in (((structured.get("speed") or {}).get("phases")) or {}).items():
        for phase, n in table.items():
            rows.append([dtype, phase, f"{n['dense_tokens_per_s']:,.1f}", f"{n['pruned_tokens_per_s']:,.1f}",
                         f"{n['speedup']:.2f}x"])
    return rows


def _structured_width_rows(structured: Mapping[str, Any]) -> list[list[str]]:
    dense = structured.get("dense_widths") or {}
    layers = structured.get("kept_layers") or list(range(len(structured.get("widths") or [])))
    return [[layer, f"{w['heads']} of {dense.get('heads', '?')}", f"{w['kv_heads']} of {dense.get('kv_heads', '?')}",
             f"{w['channels']:,} of {dense.get('channels', '?'):,}" if dense.get("channels") else w["channels"]]
            for layer, w in zip(layers, structured.get("widths") or [])]


STRUCTURED_SPEED_HEADERS = ["weights", "phase", "dense tokens/s", "pruned tokens/s", "speed-up"]
STRUCTURED_WIDTH_HEADERS = ["layer", "query heads", "key/value heads", "MLP channels"]


# ----------------------------------------------------------------------------------------- plotly.js

def plotly_js_path() -> Path:
    """Path of plotly.min.js inside the installed plotly package (located without importing plotly)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise PruneScopeError("The plotly package is not installed; the HTML report embeds its plotly.min.js. "
                              "Run `pip install plotly`.")
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise PruneScopeError(f"{path} is missing; reinstall plotly.")
    return path


def script_json(obj: Any) -> str:
    """JSON safe to place inside a <script> element (no '</' or '<!--' can end or confuse it)."""
    text = json.dumps(obj, default=_json_default, allow_nan=False)
    return text.replace("</", "<\\/").replace("<!--", "\\u003c!--")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _clean(obj: Any) -> Any:
    """Replace non-finite floats by None (NaN is not JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------- figures

def report_figures(data: Mapping[str, Any]) -> list[dict]:
    """[{"id", "title", "figure"}] for the report: curves per corpus, then the sensitivity heatmap."""
    from pruning_core.outputs import figures

    out = []
    results = data.get("results")
    if results:
        for corpus in figures.corpora_in(results):
            out.append({"id": f"curves-{len(out)}", "title": f"Perplexity vs sparsity ({corpus})",
                        "figure": figures.curves_figure(results, corpus)})
    sens = data.get("sensitivity")
    if sens:
        out.append({"id": f"heatmap-{len(out)}", "title": "Sensitivity heatmap", "figure": figures.heatmap_figure(sens)})
    structured = data.get("structured")
    if structured and structured.get("widths") and structured.get("dense_widths"):
        from pruning_core.structured.figures import widths_figure

        out.append({"id": f"widths-{len(out)}", "title": "Widths per layer",
                    "figure": widths_figure(dict(structured), structured["dense_widths"])})
    recovery = data.get("recovery")
    if recovery:
        from pruning_core.recovery.figures import loss_figure, perplexity_figure

        out += [{"id": f"recovery-loss-{len(out)}", "title": "Training loss", "figure": loss_figure(recovery),
                 "section": "recovery"},
                {"id": f"recovery-ppl-{len(out) + 1}", "title": "Perplexity during recovery",
                 "figure": perplexity_figure(recovery), "section": "recovery"}]
    continual = data.get("continual")
    if continual:
        from pruning_core.continual import figures as cf

        out += [{"id": f"continual-r-{len(out) + k}", "title": f"R matrix: {name}", "section": "continual",
                 "figure": cf.r_matrix_figure(continual, name)} for k, name in enumerate(continual["strategies"])]
        out += [{"id": f"continual-transfer-{len(out)}", "title": "BWT and average perplexity",
                 "figure": cf.transfer_figure(continual), "section": "continual"},
                {"id": f"continual-overlap-{len(out) + 1}", "title": "Mask overlap",
                 "figure": cf.overlap_figure(continual), "section": "continual"}]
    summary = allocation_summary(data)
    if summary and not summary["uniform"]:
        out.append({"id": f"plan-{len(out)}", "title": "Sparsity plan", "figure": plan_figure(summary),
                    "section": "allocation"})
    return out


def plan_figure(summary: Mapping[str, Any]) -> dict:
    """A plan (`allocation_summary`) as a layers x module-kinds heatmap of sparsities in %, drawn with the
    sensitivity heatmap's specification (`figures.heatmap_figure`) as the dashboard's Allocation view draws it,
    titled with the allocator and the global sparsity by parameters."""
    from pruning_core.outputs import figures

    who = summary["allocator"] + (f" (from {summary['edited_from']})" if summary.get("edited_from") else "")
    as_map = {"layers": [r["layer"] for r in summary["rows"]], "modules": list(summary["kinds"]),
              "values": [[100.0 * v for v in r["values"]] for r in summary["rows"]], "metric": "sparsity (%)",
              "method": who, "sparsity": None}
    if summary.get("module_sizes") is not None:
        as_map["module_sizes"] = summary["module_sizes"]
    figure = figures.heatmap_figure(as_map)
    total = summary.get("global_sparsity")
    figure["layout"]["title"]["text"] = "Sparsity plan<br><sup>" + _e(who) + (
        f" · {100.0 * total:.1f} % of the pruned weights, counted over parameters" if total is not None else "") \
        + "</sup>"
    figure["data"][0]["meta"] = {"role": "plan", "allocator": summary["allocator"], "global_sparsity": total}
    return figure


# ----------------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1a1a1a;line-height:1.5}
h1{font-size:1.8em;margin-bottom:.2em}h2{border-bottom:2px solid #0072B2;padding-bottom:.2em;margin-top:2em}
.summary{background:#EEF6FB;border-left:6px solid #0072B2;padding:1em 1.4em;font-size:1.1em}
table{border-collapse:collapse;margin:1em 0;font-size:.95em}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:right}th{background:#f2f2f2}td.l,th.l{text-align:left}
.gen td{text-align:left;vertical-align:top;white-space:pre-wrap;max-width:30em}
.chart{width:100%;min-height:460px;margin:1em 0}.muted{color:#555;font-size:.9em}
code{background:#f4f4f4;padding:0 .2em}
@media print{.chart{page-break-inside:avoid}h2{page-break-after:avoid}}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], left: int = 1, cls: str = "") -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(f'<td class="{"l" if i < left else ""}">{_e(c)}</td>' for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _ppl_rows(data) -> list[list[str]]:
    dense = (data.get("ppl") or {}).get("dense") or {}
    pruned = (data.get("ppl") or {}).get("pruned") or {}
    rows = []
    for corpus in dict.fromkeys([*dense, *pruned]):
        d, p = dense.get(corpus), pruned.get(corpus)
        change = f"{100 * (p / d - 1):+.1f} %" if d and p else "–"
        rows.append([corpus, _num(d), _num(p), change])
    return rows


def _lm_eval_rows(data) -> list[list[str]]:
    rows = []
    for row in (data.get("lm_eval") or {}).get("rows", []):
        rows.append([row.get("task"), row.get("metric"), row.get("unit", ""), _num(row.get("dense"), 4),
                     _num(row.get("pruned"), 4), row.get("limit", "all")])
    return rows


RECOVERY_HEADERS = ["corpus", "dense", "pruned", "after recovery", "gap won back"]


def _recovery_rows(recovery: Mapping[str, Any]) -> list[list[str]]:
    from pruning_core.recovery.figures import before_after

    return [[r["corpus"], _num(r["dense"], 2), _num(r["pruned"], 2), _num(r["recovered"], 2),
             "–" if r["share"] is None else f"{100 * r['share']:.0f} %"] for r in before_after(dict(recovery))]


def _recovery_facts(recovery: Mapping[str, Any]) -> list[list[str]]:
    from pruning_core.recovery.figures import recovery_facts

    return recovery_facts(dict(recovery))


def _recovery_samples(recovery: Mapping[str, Any]) -> list[list[str]]:
    return [[g.get("prompt", ""), g.get("dense", ""), g.get("pruned", "")] for g in recovery.get("samples") or []]


def _continual_parts(continual: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The Continual pruning section as (kind, content) parts, shared by the HTML and the Markdown report:
    ("p", text), ("table", (headers, rows)), ("h3", title)."""
    from pruning_core.continual import figures as cf

    parts: list[tuple[str, Any]] = [
        ("p", "Domains arrive in order; after step t a strategy may use only the domains seen so far (joint sees "
              "them all at once: the non-continual reference). R[t][i] = perplexity on domain i's evaluation split "
              "after step t (lower is better). " + str(continual.get("bwt_note") or "BWT: positive = forgetting")
              + "."),
        ("table", (cf.SUMMARY_HEADERS, cf.summary_table(dict(continual))))]
    for name, figures in continual["strategies"].items():
        overlap = ", ".join(f"{v:.3f}" for v in figures.get("overlap") or []) or "–"
        parts += [("h3", f"R matrix: {cf.strategy_label(dict(continual), name)}"),
                  ("p", f"Rule: {figures.get('rule', '')}. BWT {cf.signed(figures.get('bwt'), 3)}, average perplexity "
                        f"after the last step {_num(figures.get('average'))}; mask overlap between consecutive "
                        f"steps {overlap}."),
                  ("table", cf.r_table(dict(continual), name))]
    return parts


def _setting_rows(data) -> list[list[str]]:
    s = data.get("setting", {})
    rows = [["model", s.get("model")], ["model source", s.get("source", "")], ["fingerprint", s.get("fingerprint", "")],
            ["method", s.get("method")], ["structure", s.get("structure")], ["allocation", s.get("allocator")],
            ["target sparsity", _pct(s.get("sparsity"), 2)], ["measured sparsity", _pct(s.get("measured_sparsity"), 2)],
            ["propagation", s.get("propagation", "")]]
    if s.get("structure") == claims.STRUCTURED:  # removed parameters, not zeros (DESIGN "Structured ratio")
        rows[6:8] = [["target: decoder parameters removed", _pct(s.get("sparsity"), 2)],
                     ["measured: decoder parameters removed", _pct(s.get("measured_sparsity"), 2)]]
    return [r for r in rows if r[1] not in (None, "")]


def _sizes(data: Mapping[str, Any]) -> dict | None:
    """The report's sizes in today's form (reports stored earlier are recomputed from their counts)."""
    return claims.sizes_from_record(data.get("sizes"), data.get("setting", {}).get("structure", "unstructured"))


def _size_rows(sizes: Mapping[str, Any]) -> list[list[str]]:
    return [[f["label"], "not applicable" if f["bytes"] is None else claims.format_bytes(f["bytes"]), f["note"]]
            for f in claims.size_forms(sizes)]


def _kv_rows(mapping: Mapping[str, Any]) -> list[list[str]]:
    return [[k, json.dumps(v) if isinstance(v, (dict, list)) else v] for k, v in mapping.items()]


def render_html(data: Mapping[str, Any], plotly_js: str | None = None) -> str:
    """The self-contained HTML report as a string (plotly.js inlined unless `plotly_js` is given)."""
    if plotly_js is None:
        plotly_js = plotly_js_path().read_text(encoding="utf-8")
    figs = report_figures(data)
    title = f"PruneScope report: {data.get('setting', {}).get('model', 'model')}"
    parts = [f"<h1>{_e(title)}</h1>",
             f'<p class="muted">Generated {_e(data.get("generated", ""))} by PruneScope.</p>',
             '<h2 id="summary">Summary</h2><div class="summary">'
             + "".join(f"<p>{_e(s)}</p>" for s in summary_sentences(data)) + "</div>",
             "<h2>Setting</h2>", _html_table(["", "value"], _setting_rows(data), left=2)]
    if data.get("ppl"):
        parts += ["<h2>Quality</h2>",
                  ('<p class="muted">Token-level perplexity (exp of the mean token NLL over non-overlapping windows; '
                   "lower is better).</p>"),
                  _html_table(["corpus", "dense", "pruned", "change"], _ppl_rows(data))]
    recovery = data.get("recovery")
    if recovery:
        parts += ['<h2 id="recovery">Recovery</h2>',
                  '<p class="muted">A masked LoRA adapter trained on the pruned model and merged into it; the "after '
                  'recovery" perplexity is the merged model\'s, measured with the same evaluation.</p>',
                  _html_table(RECOVERY_HEADERS, _recovery_rows(recovery)),
                  _html_table(["", "value"], _recovery_facts(recovery), left=2)]
        parts += [f'<div class="chart" id="{_e(fig["id"])}"></div>' for fig in figs
                  if fig.get("section") == "recovery"]
        if recovery.get("samples"):
            parts += ["<h3>Sample generations, dense and recovered (greedy)</h3>",
                      _html_table(["prompt", "dense", "recovered"], _recovery_samples(recovery), left=3, cls="gen")]
    continual = data.get("continual")
    if continual:
        parts.append('<h2 id="continual">Continual pruning</h2>')
        for kind, content in _continual_parts(continual):
            parts.append(_html_table(*content) if kind == "table" else f"<{kind}>{_e(content)}</{kind}>")
        parts += [f'<div class="chart" id="{_e(fig["id"])}"></div>' for fig in figs
                  if fig.get("section") == "continual"]
    sizes = _sizes(data)
    if sizes:
        parts += ["<h2>Size and speed</h2>",
                  f'<p class="muted">As {sizes["value_bits"]}-bit weights, whole model.</p>',
                  _html_table(["storage form", "size", "how"], _size_rows(sizes), left=3)]
    if data.get("speed_note"):
        parts.append(f"<p>{_e(data['speed_note'])}</p>")
    if data.get("unstructured_note"):
        parts.append(f'<p class="muted">{_e(unstructured_contrast(data["unstructured_note"]))}</p>')
    structured = data.get("structured")
    if structured and _structured_speed_rows(structured):
        parts += ['<h3>Measured speed</h3><p class="muted">Dense and pruned in the same run on '
                  f'{_e((structured["speed"] or {}).get("machine_text", "this machine"))}; fastest of the runs (other processes only add time).</p>',
                  _html_table(STRUCTURED_SPEED_HEADERS, _structured_speed_rows(structured), left=2)]
    if structured and structured.get("widths"):
        parts += ["<h2>Widths per layer</h2>",
                  _html_table(STRUCTURED_WIDTH_HEADERS, _structured_width_rows(structured))]
    allocation = allocation_summary(data)
    if allocation:
        parts += ['<h2 id="allocation">Where the zeros are</h2>',
                  "".join(f"<p>{_e(x)}</p>" for x in allocation_sentences(allocation))]
        parts += [f'<div class="chart" id="{_e(fig["id"])}"></div>' for fig in figs
                  if fig.get("section") == "allocation"]
        if allocation["rows"]:
            parts += ['<p class="muted">Planned sparsity per module (%); "layer" is the layer\'s sparsity counted '
                      "over its parameters.</p>",
                      _html_table(["layer", "layer (by parameters)", *allocation["kinds"]],
                                  _allocation_rows(allocation))]
    charts = [fig for fig in figs if fig.get("section", "charts") == "charts"]
    parts.append("<h2>Charts</h2>")
    if charts:
        for fig in charts:
            parts.append(f'<h3>{_e(fig["title"])}</h3><div class="chart" id="{_e(fig["id"])}"></div>')
    else:
        parts.append("<p>No charts: no curve results and no sensitivity map were given.</p>")
    if data.get("sensitivity_note"):
        parts.append(f'<p class="muted">{_e(data["sensitivity_note"])}</p>')
    table = data.get("per_layer")
    if table:
        parts += ["<h2>Per-layer sparsity</h2>", f'<p class="muted">Measured, {_e(table.get("unit", ""))} (%).</p>',
                  _html_table(["layer", *table["modules"]],
                              ([r["layer"], *[_pct(v) for v in r["values"]]] for r in table["rows"]))]
    if data.get("generations"):
        parts += ["<h2>Sample generations</h2>",
                  '<p class="muted">Greedy decoding; the same prompt for the dense and the pruned model.</p>',
                  _html_table(["prompt", "dense", "pruned"],
                              ([g.get("prompt", ""), g.get("dense", ""), g.get("pruned", "")]
                               for g in data["generations"]), left=3, cls="gen")]
    if data.get("lm_eval"):
        lm = data["lm_eval"]
        parts += ["<h2>lm-eval</h2>",
                  f'<p class="muted">{_e(lm.get("note", "lm-evaluation-harness, in-memory model."))}</p>',
                  _html_table(["task", "metric", "unit", "dense", "pruned", "limit"], _lm_eval_rows(data), left=3)]
    if data.get("files"):
        parts += ["<h2>Files</h2>", _html_table(["file", "bytes"], [[f["name"], f.get("bytes", "")] for f in data["files"]])]
    parts += ["<h2>Protocol</h2>", _html_table(["", "value"], _kv_rows(data.get("protocol") or {}), left=2),
              "<h2>Environment</h2>", _html_table(["", "value"], _kv_rows(data.get("env") or {}), left=2)]
    plots = "".join(
        f'Plotly.newPlot({script_json(f["id"])}, F[{i}].data, F[{i}].layout, '
        '{responsive:true, displaylogo:false});' for i, f in enumerate(figs))
    figure_json = script_json([f["figure"] for f in figs])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style>"
        f"<script>{plotly_js}</script></head><body>{''.join(parts)}"
        f"<script>const F = {figure_json};{plots}"
        "document.body.setAttribute('data-charts', String(F.length));</script></body></html>\n"
    )


# ----------------------------------------------------------------------------------------- Markdown

def _md_escape(value: Any) -> str:
    """Escape text for a Markdown table cell (and neutralise raw HTML)."""
    text = html.escape(str(value), quote=False)
    return text.replace("|", "\\|").replace("\n", "<br>")


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(_md_escape(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(data: Mapping[str, Any]) -> str:
    """The report as Markdown (charts are in report.html; their numbers are in the tables)."""
    s = data.get("setting", {})
    out = [f"# PruneScope report: {_md_escape(s.get('model', 'model'))}", "",
           f"Generated {_md_escape(data.get('generated', ''))}.", "", "## Summary", ""]
    out += [_md_escape(x) for x in summary_sentences(data)]
    out += ["", "## Setting", "", _md_table(["", "value"], _setting_rows(data))]
    if data.get("ppl"):
        out += ["", "## Quality (token-level perplexity, lower is better)", "",
                _md_table(["corpus", "dense", "pruned", "change"], _ppl_rows(data))]
    recovery = data.get("recovery")
    if recovery:
        out += ["", "## Recovery", "",
                "A masked LoRA adapter trained on the pruned model and merged into it; the \"after recovery\" "
                "perplexity is the merged model's, measured with the same evaluation.", "",
                _md_table(RECOVERY_HEADERS, _recovery_rows(recovery)), "",
                _md_table(["", "value"], _recovery_facts(recovery))]
        if recovery.get("samples"):
            out += ["", "### Sample generations, dense and recovered (greedy)", "",
                    _md_table(["prompt", "dense", "recovered"], _recovery_samples(recovery))]
    continual = data.get("continual")
    if continual:
        out += ["", "## Continual pruning"]
        for kind, content in _continual_parts(continual):
            out += ["", _md_table(*content) if kind == "table" else
                    f"### {_md_escape(content)}" if kind == "h3" else _md_escape(content)]
    sizes = _sizes(data)
    if sizes:
        out += ["", f"## Size and speed (as {sizes['value_bits']}-bit weights, whole model)", "",
                _md_table(["storage form", "size", "how"], _size_rows(sizes))]
    if data.get("speed_note"):
        out += ["", _md_escape(data["speed_note"])]
    if data.get("unstructured_note"):
        out += ["", _md_escape(unstructured_contrast(data["unstructured_note"]))]
    structured = data.get("structured")
    if structured and _structured_speed_rows(structured):
        out += ["", "### Measured speed (dense and pruned in the same run, fastest of the runs)", "",
                _md_table(STRUCTURED_SPEED_HEADERS, _structured_speed_rows(structured))]
    if structured and structured.get("widths"):
        out += ["", "## Widths per layer", "", _md_table(STRUCTURED_WIDTH_HEADERS, _structured_width_rows(structured))]
    allocation = allocation_summary(data)
    if allocation:
        out += ["", "## Where the zeros are", ""] + [_md_escape(x) for x in allocation_sentences(allocation)]
        if allocation["rows"]:
            out += ["", "Planned sparsity per module (%); \"layer\" is the layer's sparsity counted over its "
                        "parameters.", "",
                    _md_table(["layer", "layer (by parameters)", *allocation["kinds"]], _allocation_rows(allocation))]
    if data.get("results"):
        from pruning_core.outputs.figures import curve_table_rows

        rows = curve_table_rows(data["results"])
        if rows:
            headers = list(rows[0])
            out += ["", "## Curve points", "", _md_table(headers, ([_num(r[h]) for h in headers] for r in rows))]
    if data.get("sensitivity_note"):
        out += ["", _md_escape(data["sensitivity_note"])]
    table = data.get("per_layer")
    if table:
        out += ["", "## Per-layer sparsity (measured, %)", "",
                _md_table(["layer", *table["modules"]],
                          ([r["layer"], *[_pct(v) for v in r["values"]]] for r in table["rows"]))]
    if data.get("generations"):
        out += ["", "## Sample generations (greedy)", "",
                _md_table(["prompt", "dense", "pruned"],
                          ([g.get("prompt", ""), g.get("dense", ""), g.get("pruned", "")] for g in data["generations"]))]
    if data.get("lm_eval"):
        out += ["", "## lm-eval", "", _md_escape(data["lm_eval"].get("note", "")), "",
                _md_table(["task", "metric", "unit", "dense", "pruned", "limit"], _lm_eval_rows(data))]
    if data.get("files"):
        out += ["", "## Files", "", _md_table(["file", "bytes"], [[f["name"], f.get("bytes", "")] for f in data["files"]])]
    out += ["", "## Protocol", "", _md_table(["", "value"], _kv_rows(data.get("protocol") or {})),
            "", "## Environment", "", _md_table(["", "value"], _kv_rows(data.get("env") or {})), ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------- PDF

def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable, or None."""
    override = os.environ.get("PRUNESCOPE_CHROMIUM")
    if override:
        return override if Path(override).is_file() else None
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def print_pdf(html_path, pdf_path, timeout_s: float = 120.0) -> Path:
    """Print an HTML file to PDF with headless Chromium (charts get 10 s of virtual time to render)."""
    chromium = find_chromium()
    if chromium is None:
        raise PruneScopeError("PDF output needs Chromium, which was not found; install it (Debian: "
                              "`apt-get install chromium`) or set PRUNESCOPE_CHROMIUM, or leave out --pdf.")
    html_path, pdf_path = Path(html_path).resolve(), Path(pdf_path).resolve()
    with tempfile.TemporaryDirectory(prefix="prunescope-chromium-") as profile:
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--no-pdf-header-footer",
                   "--run-all-compositor-stages-before-draw", "--virtual-time-budget=10000",
                   f"--print-to-pdf={pdf_path}", html_path.as_uri()]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise PruneScopeError(f"Chromium did not finish printing the PDF within {timeout_s:.0f} s; try again "
                                  "or leave out --pdf.") from None
    if not pdf_path.is_file() or pdf_path.stat().st_size == 0:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        raise PruneScopeError(f"Chromium did not write {pdf_path.name} (exit {proc.returncode}): {' / '.join(tail)}")
    return pdf_path


# ----------------------------------------------------------------------------------------- entry point

def build_report(data: Mapping[str, Any], out_dir, formats: Sequence[str] = ("html", "md", "json"),
                 pdf: bool = False) -> dict[str, Path]:
    """Write the report files; returns {format: path}.

    data (every key optional except ``setting``):
      setting: {model, source, fingerprint, method, structure, sparsity (target), measured_sparsity, propagation,
               allocator, plan (`SparsityPlan.to_dict()` or None), layer_sparsity} ("Where the zeros are")
      module_sizes: [{kind: weights}] per decoder layer (`allocation.plan.module_sizes`): a plan's per-layer
               sparsities counted over parameters
      ppl: {"dense": {corpus: ppl}, "pruned": {corpus: ppl}} (token-level perplexity)
      sizes: `claims.sizes_from_masks(...)`; speed_note: str (`claims.speed_sentence`)
      unstructured_note: a structured report's `claims.speed_sentence("unstructured")`, said beside its measured speed
      results: a results.json dict (curves); sensitivity: a sensitivity map dict (heatmap); sensitivity_note
      per_layer: `per_layer_table(...)`; generations: [{prompt, dense, pruned}]
      lm_eval: {"note", "rows": [{task, metric, unit, dense, pruned, limit}]}
      files: [{name, bytes}]; protocol: dict; env: dict
      structured: a structurally pruned model's facts (`structured_sentences`): parameters, measured speed, widths
      recovery: `recovery.run.run_recovery`'s result (the Recovery section: before/after, training, adapter, merged
               sparsity, ranks, charts and the dense vs recovered texts; `outputs.recovery_export`)
      continual: `continual.run.run_continual`'s result (the Continual pruning section: R matrices as tables, BWT
               with its sign convention, FWT, average perplexity and rule per strategy, their charts;
               `outputs.continual_export`)
    pdf=True also prints report.pdf through headless Chromium (needs "html").
    """
    unknown = set(formats) - {"html", "md", "json"}
    if unknown:
        raise ConfigError(f"Unknown report formats {sorted(unknown)}; use html, md, json.")
    if "setting" not in data:
        raise ConfigError("The report needs at least the 'setting' (model, method, structure, sparsity).")
    doc = _clean(dict(data))
    doc.setdefault("generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if "json" in formats:
        paths["json"] = _write(out / "report.json", json.dumps(
            {"format_version": REPORT_FORMAT_VERSION, "summary": summary_sentences(doc), **doc},
            indent=2, default=_json_default))
    if "md" in formats:
        paths["md"] = _write(out / "report.md", render_markdown(doc))
    if "html" in formats or pdf:
        paths["html"] = _write(out / "report.html", render_html(doc))
    if pdf:
        paths["pdf"] = print_pdf(paths["html"], out / "report.pdf")
    return paths


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path

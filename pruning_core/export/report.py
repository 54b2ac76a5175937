"""The mask export's report: dense against pruned, the curves and the sensitivity heatmap, per-layer sparsity,
sample generations and lm-eval, around the sections every setting has (`outputs.setting_sections`).

`export_report(record)` turns `pipeline.run_export`'s record into the document `outputs.report.build_report`
writes; `per_layer_table` fills the record's per-layer table from a pruning result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from pruning_core.outputs import figures
from pruning_core.outputs.plan_section import plan_section
from pruning_core.outputs.report import report_document
from pruning_core.outputs.sections import Block, Figure, Paragraph, Section, Table
from pruning_core.outputs.setting_sections import (closing_sections, generations_section, number, opening_sections,
                                                   percent, size_section)


def per_layer_table(adapter, per_module_sparsity: Mapping[str, float], n_layers: int) -> dict:
    """Layers x module kinds table of measured sparsity (fraction; None where a module was not pruned)."""
    kinds = adapter.module_kinds
    rows = []
    for layer in range(n_layers):
        values = [per_module_sparsity.get(adapter.qualified_name(layer, kind)) for kind in kinds]
        rows.append({"layer": layer, "values": values})
    return {"modules": kinds, "rows": rows, "unit": "fraction of zero weights"}


def charts_section(data: Mapping[str, Any]) -> Section:
    """Perplexity against sparsity per corpus (the record's "results") and the sensitivity heatmap
    ("sensitivity", with its "sensitivity_note"), then the curve points as a table (%, perplexity, seconds)."""
    blocks: list[Block] = []
    results = data.get("results")
    if results:
        blocks += [Figure("curves", figures.curves_figure(results, corpus), f"Perplexity vs sparsity ({corpus})")
                   for corpus in figures.corpora_in(results)]
    if data.get("sensitivity"):
        blocks.append(Figure("heatmap", figures.heatmap_figure(data["sensitivity"]), "Sensitivity heatmap"))
    if not blocks:
        blocks.append(Paragraph("No charts: no curve results and no sensitivity map were given."))
    if data.get("sensitivity_note"):
        blocks.append(Paragraph(data["sensitivity_note"], note=True))
    rows = figures.curve_table_rows(results) if results else []
    if rows:
        headers = list(rows[0])
        blocks.append(Section("Curve points", [Table(headers, [[number(r[h]) for h in headers] for r in rows], 2)]))
    return Section("Charts", blocks)


def per_layer_section(data: Mapping[str, Any]) -> Optional[Section]:
    """Measured sparsity per decoder layer and module kind (`per_layer_table`, in %), or None without it."""
    table = data.get("per_layer")
    if not table:
        return None
    return Section("Per-layer sparsity", [
        Paragraph(f"Measured, {table.get('unit', '')} (%).", note=True),
        Table(["layer", *table["modules"]], [[r["layer"], *[percent(v) for v in r["values"]]] for r in table["rows"]])])


def lm_eval_section(data: Mapping[str, Any]) -> Optional[Section]:
    """lm-evaluation-harness scores, dense against pruned, per task and metric (units as the harness gives
    them), or None when lm-eval was not run."""
    lm = data.get("lm_eval")
    if not lm:
        return None
    rows = [[row.get("task"), row.get("metric"), row.get("unit", ""), number(row.get("dense"), 4),
             number(row.get("pruned"), 4), row.get("limit", "all")] for row in lm.get("rows", [])]
    return Section("lm-eval", [Paragraph(lm.get("note", "lm-evaluation-harness, in-memory model."), note=True),
                               Table(["task", "metric", "unit", "dense", "pruned", "limit"], rows, 3)])


def export_sections(data: Mapping[str, Any], summary: list[str]) -> list[Optional[Section]]:
    """The export report's sections in page order (None where the record lacks the part)."""
    return [*opening_sections(data, summary), size_section(data), plan_section(data), charts_section(data),
            per_layer_section(data), generations_section(data), lm_eval_section(data), *closing_sections(data)]


def export_report(record: Mapping[str, Any]) -> dict:
    """`build_report`'s document of a mask export's record (`pipeline.run_export`'s "report")."""
    return report_document(record, sections_of=export_sections)

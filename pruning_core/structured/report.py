"""The report of a structurally pruned model: what was removed (in parameters, DESIGN "Structured ratio"), the
saved file's size, the measured speed beside unstructured pruning's honest none, and the widths left per layer.

`structured_report(record)` turns `export.structured_report_data`'s record into the document
`outputs.report.build_report` writes. The record's "structured" part: {"measured_ratio", "parameters"
(`ParameterCounts` as a dict), "file_bytes" (or None), "file_dtype", "speed" (`speed.measure_speed`'s dict or
None), "widths", "kept_layers", "dense_widths", "reload" (or None)}; its "unstructured_note" is
`claims.speed_sentence("unstructured")`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from pruning_core import claims
from pruning_core.outputs.report import report_document
from pruning_core.outputs.sections import Block, Figure, Paragraph, Section, Table
from pruning_core.outputs.setting_sections import (closing_sections, generations_section, opening_sections,
                                                   percent, size_section, summary_sentences)
from pruning_core.structured.figures import widths_figure

STRUCTURED_SPEED_HEADERS = ["weights", "phase", "dense tokens/s", "pruned tokens/s", "speed-up"]
STRUCTURED_WIDTH_HEADERS = ["layer", "query heads", "key/value heads", "MLP channels"]


def structured_sentences(setting: Mapping[str, Any], structured: Mapping[str, Any]) -> list[str]:
    """What a structured setting removed, in parameters (DESIGN "Structured ratio"), and the saved file's size."""
    params = structured["parameters"]
    model_removed = 1.0 - params["model_after"] / max(params["model_before"], 1)
    out = [(f"{setting.get('model', 'The model')} was pruned structurally ({setting.get('method', '?')}): "
            f"{percent(structured['measured_ratio'])} of its decoder-layer parameters were removed, so the whole "
            f"model went from {params['model_before']:,} to {params['model_after']:,} parameters "
            f"({percent(model_removed)} of the model, embeddings and LM head included).")]
    if structured.get("file_bytes"):
        out.append(f"The saved model's weight files take {claims.format_bytes(structured['file_bytes'])} "
                   f"({structured.get('file_dtype', 'float32')} as saved).")
    reload = structured.get("reload")
    if reload:
        out.append(f"Reloaded from its folder, it gives the same perplexity to {reload['max_relative_gap']:.1e} "
                   "relative" + (" with plain transformers." if reload.get("loadable_with_transformers") else
                                 f" ({reload.get('load_note', '')})."))
    return out


def unstructured_contrast(note: str) -> str:
    """A structured report's comparison line: what unstructured pruning (zeros kept) gains in speed, in the claims
    module's words (`claims.speed_sentence("unstructured")`)."""
    return f"Unstructured pruning, by contrast, zeroes weights without removing them: {note}"


def structured_summary(data: Mapping[str, Any]) -> list[str]:
    """The summary: what was removed and the file size, then quality, size and measured speed, then unstructured
    pruning's speed for contrast (`summary_sentences` with this report's lead and closing sentences)."""
    lead = structured_sentences(data.get("setting", {}), data["structured"]) if data.get("structured") else None
    more = [unstructured_contrast(data["unstructured_note"])] if data.get("unstructured_note") else []
    return summary_sentences(data, lead, more)


def _speed_rows(structured: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for dtype, table in (((structured.get("speed") or {}).get("phases")) or {}).items():
        for phase, n in table.items():
            rows.append([dtype, phase, f"{n['dense_tokens_per_s']:,.1f}", f"{n['pruned_tokens_per_s']:,.1f}",
                         f"{n['speedup']:.2f}x"])
    return rows


def _width_rows(structured: Mapping[str, Any]) -> list[list[Any]]:
    dense = structured.get("dense_widths") or {}
    layers = structured.get("kept_layers") or list(range(len(structured.get("widths") or [])))
    return [[layer, f"{w['heads']} of {dense.get('heads', '?')}", f"{w['kv_heads']} of {dense.get('kv_heads', '?')}",
             f"{w['channels']:,} of {dense.get('channels', '?'):,}" if dense.get("channels") else w["channels"]]
            for layer, w in zip(layers, structured.get("widths") or [])]


def _speed_blocks(data: Mapping[str, Any]) -> list[Block]:
    """Unstructured pruning's speed for contrast, then the measured tokens/s, dense and pruned (when timed)."""
    structured = data.get("structured") or {}
    blocks: list[Block] = []
    if data.get("unstructured_note"):
        blocks.append(Paragraph(unstructured_contrast(data["unstructured_note"]), note=True))
    rows = _speed_rows(structured)
    if rows:
        machine = (structured.get("speed") or {}).get("machine_text", "this machine")
        blocks.append(Section("Measured speed", [
            Paragraph(f"Dense and pruned in the same run on {machine}; fastest of the runs (other processes only "
                      "add time).", note=True),
            Table(STRUCTURED_SPEED_HEADERS, rows, text_columns=2)]))
    return blocks


def widths_section(structured: Mapping[str, Any]) -> Optional[Section]:
    """Heads and MLP channels kept per remaining decoder layer (table and chart), or None without widths."""
    if not structured.get("widths"):
        return None
    blocks: list[Block] = [Table(STRUCTURED_WIDTH_HEADERS, _width_rows(structured))]
    if structured.get("dense_widths"):
        blocks.append(Figure("widths", widths_figure(dict(structured), structured["dense_widths"])))
    return Section("Widths per layer", blocks)


def structured_sections(data: Mapping[str, Any], summary: list[str]) -> list[Optional[Section]]:
    """The structured report's sections in page order (None where the record lacks the part)."""
    return [*opening_sections(data, summary), size_section(data, *_speed_blocks(data)),
            widths_section(data.get("structured") or {}), generations_section(data), *closing_sections(data)]


def structured_report(record: Mapping[str, Any]) -> dict:
    """`build_report`'s document of a structured point's record (`export.structured_report_data`)."""
    return report_document(record, structured_summary, structured_sections)

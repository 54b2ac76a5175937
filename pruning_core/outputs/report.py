"""The evaluation report of one pruning setting: HTML (self-contained), Markdown, JSON, and PDF.

A report is a record and its sections. The record is plain data (setting, perplexities, sizes, the
capability's results; see `build_report`) and is written as ``report.json``; the sections
(`outputs.sections`) are what a reader sees, drawn by `render_html.html_page` and
`render_markdown.markdown_page`. Each capability builds its sections once, from its record
(`structured.report`, `recovery.report`, `continual.report`, `export.report`), and gives
`report_document`'s dict to `build_report`; a record without sections gets the sections every setting has
(`setting_sections`). This module knows no capability.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from pruning_core.errors import ConfigError
from pruning_core.outputs.files import json_default, json_safe, write_text
from pruning_core.outputs.pdf import print_pdf
from pruning_core.outputs.plan_section import plan_section
from pruning_core.outputs.render_html import html_page
from pruning_core.outputs.render_markdown import markdown_page
from pruning_core.outputs.sections import Section
from pruning_core.outputs.setting_sections import closing_sections, opening_sections, size_section, summary_sentences

REPORT_FORMAT_VERSION = 1

SummaryFn = Callable[[Mapping[str, Any]], list[str]]
SectionsFn = Callable[[Mapping[str, Any], list[str]], Sequence[Optional[Section]]]

__all__ = ["REPORT_FORMAT_VERSION", "build_report", "render_html", "render_markdown", "report_document",
           "setting_sections", "summary_sentences"]


def setting_sections(data: Mapping[str, Any], summary: list[str], *own: Optional[Section]) -> list[Optional[Section]]:
    """A setting's report in page order: summary, setting, quality, then `own` (a capability's sections), size
    and speed, where the zeros are, files, protocol, environment (None where the record lacks the part)."""
    return [*opening_sections(data, summary), *own, size_section(data), plan_section(data), *closing_sections(data)]


def report_document(record: Mapping[str, Any], summary_of: SummaryFn = summary_sentences,
                    sections_of: SectionsFn = setting_sections) -> dict:
    """The report as `build_report` and the renderers take it: the record with non-finite numbers as None, its
    summary sentences ``"summary"`` (`summary_of(record)`) and its body ``"sections"``
    (`sections_of(record, summary)`, in page order; the None entries are left out)."""
    data = json_safe(dict(record))
    summary = summary_of(data)
    sections = [s for s in sections_of(data, summary) if s is not None]
    return {**data, "summary": summary, "sections": sections}


def _document(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """`data` itself when it holds its sections (a `report_document`), else the setting's own report of it."""
    return data if "sections" in data else report_document(data)


def _title(data: Mapping[str, Any]) -> str:
    return f"PruneScope report: {data.get('setting', {}).get('model', 'model')}"


def render_html(data: Mapping[str, Any], plotly_js: Optional[str] = None) -> str:
    """The self-contained HTML report of `data` (a `report_document`, or a bare record) as a string; plotly.js
    is inlined unless `plotly_js` is given."""
    doc = _document(data)
    return html_page(_title(doc), doc.get("generated", ""), doc["sections"], plotly_js)


def render_markdown(data: Mapping[str, Any]) -> str:
    """The report as Markdown (charts are in report.html; their numbers are in the tables)."""
    doc = _document(data)
    return markdown_page(_title(doc), doc.get("generated", ""), doc["sections"])


def build_report(data: Mapping[str, Any], out_dir, formats: Sequence[str] = ("html", "md", "json"),
                 pdf: bool = False) -> dict[str, Path]:
    """Write the report files; returns {format: path}.

    data: a `report_document` (a capability's record with its "summary" and "sections"), or a bare record,
    which gets the sections every setting has. The record's keys (every one optional except ``setting``):
      setting: {model, source, fingerprint, method, structure, sparsity (target), measured_sparsity, propagation,
               allocator, plan (`SparsityPlan.to_dict()` or None), layer_sparsity} ("Where the zeros are")
      module_sizes: [{kind: weights}] per decoder layer (`plan.module_sizes`): a plan's per-layer
               sparsities counted over parameters
      ppl: {"dense": {corpus: ppl}, "pruned": {corpus: ppl}} (token-level perplexity)
      sizes: `sizes.records.sizes_from_masks(...)` (measured files); speed_note: str (`claims.speed_sentence`)
      generations: [{prompt, dense, pruned}]; files: [{name, bytes}]; protocol: dict; env: dict
      and whatever the capability reports from (`export.report`: results, sensitivity, per_layer, lm_eval;
      `structured.report`: structured, unstructured_note; `recovery.report`: recovery; `continual.report`:
      continual).
    report.json holds the record and its summary, not the sections. pdf=True also prints report.pdf through
    headless Chromium (needs "html").
    """
    unknown = set(formats) - {"html", "md", "json"}
    if unknown:
        raise ConfigError(f"Unknown report formats {sorted(unknown)}; use html, md, json.")
    if "setting" not in data:
        raise ConfigError("The report needs at least the 'setting' (model, method, structure, sparsity).")
    doc = dict(_document(data))
    doc.setdefault("generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if "json" in formats:
        record = {k: v for k, v in doc.items() if k != "sections"}
        paths["json"] = write_text(out / "report.json", json.dumps(
            {"format_version": REPORT_FORMAT_VERSION, "summary": doc["summary"], **record},
            indent=2, default=json_default))
    if "md" in formats:
        paths["md"] = write_text(out / "report.md", render_markdown(doc))
    if "html" in formats or pdf:
        paths["html"] = write_text(out / "report.html", render_html(doc))
    if pdf:
        paths["pdf"] = print_pdf(paths["html"], out / "report.pdf")
    return paths

"""The report of a continual-pruning run: its "Continual pruning" section (the strategies by forgetting, BWT with
its sign convention, FWT, average perplexity and rule, each strategy's R matrix as a table and a heatmap, mask
overlap) and its summary sentences.

`continual_report(record)` turns `export.continual_report_data`'s record (the whole `run_continual` result under
"continual") into the document `outputs.report.build_report` writes. Words and numbers come from
`continual.figures`, so the report and the Continual page say the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from pruning_core.continual import figures as cf
from pruning_core.outputs.report import report_document, setting_sections
from pruning_core.outputs.sections import Figure, Paragraph, Section, Table
from pruning_core.outputs.setting_sections import number, summary_sentences


def _strategy_section(continual: dict, name: str) -> Section:
    """One strategy: its rule, BWT, average and mask overlap in words, its R matrix (perplexity) as a table and a
    heatmap."""
    result = continual["strategies"][name]
    overlap = ", ".join(f"{v:.3f}" for v in result.get("overlap") or []) or "–"
    return Section(f"R matrix: {cf.strategy_label(continual, name)}", [
        Paragraph(f"Rule: {result.get('rule', '')}. BWT {cf.signed(result.get('bwt'), 3)}, average perplexity after "
                  f"the last step {number(result.get('average'))}; mask overlap between consecutive steps "
                  f"{overlap}."),
        Table(*cf.r_table(continual, name)),
        Figure("continual-r", cf.r_matrix_figure(continual, name))])


def continual_section(continual: Mapping[str, Any]) -> Section:
    """The strategies compared (table, BWT and average chart, overlap chart), then one sub-section per strategy."""
    continual = dict(continual)
    intro = ("Domains arrive in order; after step t a strategy may use only the domains seen so far (joint sees "
             "them all at once: the non-continual reference). R[t][i] = perplexity on domain i's evaluation split "
             "after step t (lower is better). " + str(continual.get("bwt_note") or "BWT: positive = forgetting") + ".")
    return Section("Continual pruning", [
        Paragraph(intro), Table(cf.SUMMARY_HEADERS, cf.summary_table(continual)),
        Figure("continual-transfer", cf.transfer_figure(continual)),
        Figure("continual-overlap", cf.overlap_figure(continual)),
        *[_strategy_section(continual, name) for name in continual["strategies"]]], anchor="continual")


def continual_summary(data: Mapping[str, Any]) -> list[str]:
    """The setting's summary, then the sequence and which strategy forgets least."""
    return summary_sentences(data, more=cf.continual_sentences(dict(data["continual"])) if data.get("continual")
                             else ())


def continual_sections(data: Mapping[str, Any], summary: list[str]) -> list[Optional[Section]]:
    """The continual report's sections: the setting's, with the Continual pruning section after the quality
    table."""
    return setting_sections(data, summary, continual_section(data["continual"]) if data.get("continual") else None)


def continual_report(record: Mapping[str, Any]) -> dict:
    """`build_report`'s document of a continual run's record (`export.continual_report_data`)."""
    return report_document(record, continual_summary, continual_sections)

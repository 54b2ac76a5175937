"""The report of a recovery: its "Recovery" section (before and after per corpus, training, adapter, merged
sparsity, ranks, the loss and perplexity charts, dense against recovered texts) and its summary sentences.

`recovery_report(record)` turns `export.recovery_report_data`'s record (the whole `run_recovery` result under
"recovery") into the document `outputs.report.build_report` writes. Words and numbers come from
`recovery.figures`, so the report and the Recovery page say the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from pruning_core.outputs.report import report_document, setting_sections
from pruning_core.outputs.sections import Figure, KeyFacts, Paragraph, SampleTexts, Section, Table
from pruning_core.outputs.setting_sections import generation_rows, number, summary_sentences
from pruning_core.recovery.figures import (before_after, loss_figure, perplexity_figure, recovery_facts,
                                           recovery_sentences)

RECOVERY_HEADERS = ["corpus", "dense", "pruned", "after recovery", "gap won back"]


def recovery_section(recovery: Mapping[str, Any]) -> Section:
    """Perplexities per corpus (token-level, 2 decimals) with the share of the gap won back, the training and
    adapter facts, the two charts, and the sample generations of the dense and the recovered model."""
    recovery = dict(recovery)
    rows = [[r["corpus"], number(r["dense"], 2), number(r["pruned"], 2), number(r["recovered"], 2),
             "–" if r["share"] is None else f"{100 * r['share']:.0f} %"] for r in before_after(recovery)]
    blocks = [Paragraph('A masked LoRA adapter trained on the pruned model and merged into it; the "after recovery" '
                        "perplexity is the merged model's, measured with the same evaluation.", note=True),
              Table(RECOVERY_HEADERS, rows), KeyFacts(recovery_facts(recovery)),
              Figure("recovery-loss", loss_figure(recovery)), Figure("recovery-ppl", perplexity_figure(recovery))]
    if recovery.get("samples"):
        blocks.append(Section("Sample generations, dense and recovered (greedy)",
                              [SampleTexts(["prompt", "dense", "recovered"], generation_rows(recovery["samples"]))]))
    return Section("Recovery", blocks, anchor="recovery")


def recovery_summary(data: Mapping[str, Any]) -> list[str]:
    """The setting's summary, then what the adapter won back in the Recovery page's words."""
    return summary_sentences(data, more=recovery_sentences(dict(data["recovery"])) if data.get("recovery") else ())


def recovery_sections(data: Mapping[str, Any], summary: list[str]) -> list[Optional[Section]]:
    """The recovery report's sections: the setting's, with the Recovery section after the quality table."""
    return setting_sections(data, summary, recovery_section(data["recovery"]) if data.get("recovery") else None)


def recovery_report(record: Mapping[str, Any]) -> dict:
    """`build_report`'s document of a recovery's record (`export.recovery_report_data`)."""
    return report_document(record, recovery_summary, recovery_sections)

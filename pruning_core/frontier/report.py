"""The frontier's report section (and a report of its own): the answer in one sentence, the chart, the table.

`frontier_section(frontier)` is the section any report can carry (the frontier's own report, a Summary report):
the answer for the budget with its note (the embedded model's Q4_1 origin beside a 4-bit figure), the chart
(`figures.frontier_figure`) and one row per point (technique, format and the runtimes that load it, bytes on disk
measured on the files, perplexity per corpus, the worst change, whether it is on the front, and its speed measured
in a runtime, read from the store, or "not measured in a runtime"), with a sentence naming the runtime and the
machine that measured the speeds (`speeds.speed_note`).
`frontier_report(result)` is `run_frontier`'s result as a whole report (`outputs.report.build_report`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from pruning_core.data import corpus_display_name
from pruning_core.frontier.figures import frontier_figure
from pruning_core.frontier.speeds import speed_cell, speed_note, speed_sentence
from pruning_core.outputs.report import report_document
from pruning_core.outputs.sections import Callout, Figure, KeyFacts, Paragraph, Section, Table
from pruning_core.outputs.setting_sections import closing_sections
from pruning_core.units import format_bytes

HOW = ("Bytes are those of the weight files written in each format and measured on disk (config and tokenizer "
       "files apart); each point is drawn at its smallest format that a named runtime loads. A pruned model "
       "saved the ordinary way stores its zeros, so its 16-bit file is the dense model's size: no serving "
       "runtime loads sparse weights any more. Perplexity is token-level (lower is better); the front is judged "
       "on the worst chosen corpus: no point on it is beaten on both size and quality.")


#: The table's speed column (the runtime and the machine are named in the sentence under the table).
SPEED_HEADER = "speed in a runtime (prefill / decode)"


def frontier_rows(frontier: Mapping[str, Any]) -> list[list[str]]:
    """One formatted row per point, smallest file first: technique, format, size, perplexity per corpus, worst
    change, on the front, speed in a runtime (prefill / decode tokens/s, `speeds.speed_cell`)."""
    rows = []
    for row in frontier.get("points") or []:
        rows.append([row["technique"], row["format_words"], f"{format_bytes(row['bytes'])} ({row['bytes']:,} B)",
                     *[f"{row['ppl'][c]:,.2f}" for c in frontier["corpora"]],
                     f"{100 * row['change']:+.1f} % ({corpus_display_name(row['worst_corpus'])})",
                     "yes" if row["on_front"] else "", speed_cell(row)])
    return rows


def answer_speed(frontier: Mapping[str, Any]) -> str:
    """The answer's point's speed measured in a runtime (the dense model's when the answer is to keep it), with
    the runtime and the machine, against the dense model's (`speeds.speed_sentence`)."""
    points = frontier.get("points") or []
    dense = next((r for r in points if r.get("family") == "dense"), None)
    row = next((r for r in points if r["key"] == (frontier.get("answer") or {}).get("key")), None)
    return speed_sentence(row or dense, dense)


def frontier_section(frontier: Mapping[str, Any], title: str = "What compression buys: the frontier") -> Section:
    """The frontier as a report section (see the module docstring)."""
    said = frontier.get("answer") or {}
    blocks: list = [Paragraph(said.get("sentence", "")), Paragraph(answer_speed(frontier))]
    if said.get("note"):
        blocks.append(Paragraph(said["note"], note=True))
    notes = sorted({row["note"] for row in frontier.get("points") or []
                    if row.get("note") and "Q4_1" in row["note"]})
    if notes and not said.get("note"):
        blocks.append(Paragraph(notes[0], note=True))
    blocks += [Paragraph(HOW, note=True),
               *[Figure("frontier", frontier_figure(frontier, corpus)) for corpus in frontier["corpora"]],
               Table(["technique", "format (runtimes)", "size on disk",
                      *[f"perplexity ({corpus_display_name(c)})" for c in frontier["corpora"]],
                      "worst change", "on the front", SPEED_HEADER], frontier_rows(frontier), text_columns=2),
               Paragraph(speed_note(frontier.get("points") or []), note=True)]
    if frontier.get("left_out"):
        blocks.append(Paragraph(f"Left out: {frontier['left_out']} point(s) not measured on every chosen corpus.",
                                note=True))
    return Section(title, blocks, anchor="frontier")


def _summary(data: Mapping[str, Any]) -> list[str]:
    frontier = data.get("frontier") or {}
    said = frontier.get("answer") or {}
    return [s for s in (said.get("sentence"), answer_speed(frontier), said.get("note")) if s]


def _sections(data: Mapping[str, Any], summary: list[str]) -> list[Optional[Section]]:
    frontier = data["frontier"]
    facts = [["model", data["setting"].get("model")], ["judged on", ", ".join(frontier["corpora"])],
             ["points", len(frontier.get("points") or [])], ["on the front", len(frontier.get("front") or [])],
             ["question", (frontier.get("answer") or {}).get("question")]]
    return [Section("Summary", [Callout(summary)], anchor="summary"), Section("Setting", [KeyFacts(facts)]),
            frontier_section(frontier), *closing_sections(data)]


def frontier_report(result: Mapping[str, Any]) -> dict:
    """`build_report`'s document of `run.run_frontier`'s result."""
    from pruning_core.provenance import environment

    model = result.get("model") or {}
    return report_document({"setting": {"model": model.get("name"), "source": model.get("source"),
                                        "fingerprint": model.get("fingerprint"), "method": "frontier"},
                            "frontier": result["frontier"], "protocol": result.get("protocol") or {},
                            "env": environment()}, _summary, _sections)

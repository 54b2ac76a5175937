"""The sections every report of a pruning setting has, built from its record (see `outputs.report.build_report`).

Summary, Setting, Quality (token-level perplexity), Size and speed, Sample generations, Files, Protocol and
Environment. A capability's report puts its own sections between `opening_sections` and `closing_sections`.
Sizes, the speed sentence and the generations come from `pruning_core.claims`, the one home of every claim
about gains, so a report words a setting exactly as the What-if and Summary pages do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from pruning_core import claims
from pruning_core.outputs.sections import Block, Callout, KeyFacts, Paragraph, SampleTexts, Section, Table
from pruning_core.sizes.records import sizes_from_record


def percent(fraction: Optional[float], digits: int = 1) -> str:
    """A fraction as "50.0 %"; "–" when unknown."""
    if fraction is None or not math.isfinite(fraction):
        return "–"
    return f"{100 * fraction:.{digits}f} %"


def number(value: Any, digits: int = 3) -> str:
    """A float with `digits` decimals, "–" when unknown or not finite; anything else as its text."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "–"
    return str(value)


def summary_sentences(data: Mapping[str, Any], lead: Optional[Sequence[str]] = None,
                      more: Sequence[str] = ()) -> list[str]:
    """The report's top summary in plain words: setting, quality change, size change, speed.

    lead: a capability's own opening sentences in place of the setting sentence (what a structured setting
    removed); more: its sentences after the rest (what a recovery won back)."""
    s = data.get("setting", {})
    sparsity = s.get("measured_sparsity", s.get("sparsity"))
    structure = s.get("structure", "unstructured")
    sentences = list(lead) if lead is not None else [
        (f"{s.get('model', 'The model')} was pruned with {s.get('method', '?')} to "
         f"{percent(sparsity)} sparsity ({structure}) of its decoder linear layers.")]
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
    size = claims.setting_claims(data.get("sizes"), structure)["size"]  # old records read in today's words
    if size:
        sentences.append(size)
    if data.get("speed_note"):
        sentences.append(data["speed_note"])
    return sentences + list(more)


def _setting_facts(data: Mapping[str, Any]) -> list[list[Any]]:
    s = data.get("setting", {})
    rows = [["model", s.get("model")], ["model source", s.get("source", "")], ["fingerprint", s.get("fingerprint", "")],
            ["method", s.get("method")], ["structure", s.get("structure")], ["allocation", s.get("allocator")],
            ["target sparsity", percent(s.get("sparsity"), 2)],
            ["measured sparsity", percent(s.get("measured_sparsity"), 2)],
            ["propagation", s.get("propagation", "")]]
    if s.get("structure") == claims.STRUCTURED:  # removed parameters, not zeros (DESIGN "Structured ratio")
        rows[6:8] = [["target: decoder parameters removed", percent(s.get("sparsity"), 2)],
                     ["measured: decoder parameters removed", percent(s.get("measured_sparsity"), 2)]]
    return [r for r in rows if r[1] not in (None, "")]


def _quality_section(data: Mapping[str, Any]) -> Optional[Section]:
    """Dense and pruned token-level perplexity per evaluation corpus, with the change in %."""
    if not data.get("ppl"):
        return None
    dense = (data.get("ppl") or {}).get("dense") or {}
    pruned = (data.get("ppl") or {}).get("pruned") or {}
    rows = []
    for corpus in dict.fromkeys([*dense, *pruned]):
        d, p = dense.get(corpus), pruned.get(corpus)
        rows.append([corpus, number(d), number(p), f"{100 * (p / d - 1):+.1f} %" if d and p else "–"])
    return Section("Quality", [
        Paragraph("Token-level perplexity (exp of the mean token NLL over non-overlapping windows; lower is "
                  "better).", note=True),
        Table(["corpus", "dense", "pruned", "change"], rows)])


def opening_sections(data: Mapping[str, Any], summary: Sequence[str]) -> list[Optional[Section]]:
    """Summary (the `summary` sentences), Setting, Quality (None where the record holds no perplexity)."""
    return [Section("Summary", [Callout(summary)], anchor="summary"),
            Section("Setting", [KeyFacts(_setting_facts(data))]),
            _quality_section(data)]


def size_section(data: Mapping[str, Any], *more: Block) -> Optional[Section]:
    """Size and speed: the bytes of the files the dense and the pruned model are saved as, in formats named with
    the runtimes that load them (`claims.size_rows`, measured on the files written), the speed sentence, then
    `more` (a capability's measured speed); None when there is nothing to say."""
    structure = data.get("setting", {}).get("structure", "unstructured")
    rows = claims.size_rows(sizes_from_record(data.get("sizes"), structure))
    blocks: list[Block] = []
    if rows:
        blocks += [Paragraph("Whole model, measured on the files written (weight files; all files with the "
                             "config).", note=True),
                   Table(["model", "saved as", "weight files", "all files"],
                         [[r["label"], r["format"], claims.format_bytes(r["bytes"]),
                           claims.format_bytes(r["total_bytes"])] for r in rows], text_columns=2)]
    elif data.get("sizes"):  # stored before sizes were measured on files: say so rather than show old formulas
        size = claims.setting_claims(data["sizes"], structure)["size"]
        blocks += [Paragraph(size)] if size else []
    if data.get("speed_note"):
        blocks.append(Paragraph(data["speed_note"]))
    blocks += more
    return Section("Size and speed", blocks) if blocks else None


def generation_rows(generations: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """[prompt, dense text, pruned text] per sample generation ({prompt, dense, pruned})."""
    return [[g.get("prompt", ""), g.get("dense", ""), g.get("pruned", "")] for g in generations]


def generations_section(data: Mapping[str, Any]) -> Optional[Section]:
    """The dense and the pruned model's greedy continuations of the same prompts, or None without any."""
    if not data.get("generations"):
        return None
    return Section("Sample generations", [
        Paragraph("Greedy decoding; the same prompt for the dense and the pruned model.", note=True),
        SampleTexts(["prompt", "dense", "pruned"], generation_rows(data["generations"]))])


def _facts(mapping: Mapping[str, Any]) -> list[list[Any]]:
    return [[k, json.dumps(v) if isinstance(v, (dict, list)) else v] for k, v in mapping.items()]


def closing_sections(data: Mapping[str, Any]) -> list[Optional[Section]]:
    """Files (name, bytes; None without any), Protocol and Environment."""
    files = data.get("files")
    return [Section("Files", [Table(["file", "bytes"], [[f["name"], f.get("bytes", "")] for f in files])])
            if files else None,
            Section("Protocol", [KeyFacts(_facts(data.get("protocol") or {}))]),
            Section("Environment", [KeyFacts(_facts(data.get("env") or {}))])]

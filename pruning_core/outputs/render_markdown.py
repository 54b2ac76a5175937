"""Any list of report sections (`outputs.sections`) as one Markdown page.

Markdown draws no charts: a `Figure` block is left out (the HTML report has it; the numbers behind it are in the
section's tables). Every text is escaped so that no raw HTML gets through and no ``|`` breaks a table.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any

from pruning_core.outputs.sections import (Block, Callout, Code, Figure, KeyFacts, Paragraph, SampleTexts, Section,
                                           Table)


def md_escape(value: Any) -> str:
    """Text for Markdown: raw HTML neutralised, ``|`` escaped (tables), line breaks as <br> (one table row)."""
    text = html.escape(str(value), quote=False)
    return text.replace("|", "\\|").replace("\n", "<br>")


def _table(headers: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(md_escape(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _code(text: str) -> str:
    """A fenced block whose fence is longer than any run of backticks in `text` (so nothing can close it)."""
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return f"{fence}\n{text}\n{fence}"


def _block(block: Block, level: int) -> list[str]:
    """One block as Markdown lines, each part preceded by a blank line; a Figure gives none."""
    if isinstance(block, Section):
        return _section(block, level + 1)
    if isinstance(block, Paragraph):
        return ["", md_escape(block.text)]
    if isinstance(block, Callout):
        return ["", "\n".join(md_escape(s) for s in block.sentences)]
    if isinstance(block, Table):
        return ["", _table(block.headers, block.rows)]
    if isinstance(block, KeyFacts):
        return ["", _table(["", "value"], block.facts)]
    if isinstance(block, SampleTexts):
        return ["", _table(block.headers, block.rows)]
    if isinstance(block, Code):
        return ["", _code(block.text)]
    if isinstance(block, Figure):
        return []
    raise TypeError(f"Not a report block: {block!r}")


def _section(section: Section, level: int) -> list[str]:
    lines = ["", f"{'#' * level} {md_escape(section.title)}"]
    for block in section.blocks:
        lines += _block(block, level)
    return lines


def markdown_page(title: str, generated: str, sections: Sequence[Section]) -> str:
    """The sections as a Markdown page, titled `title` (#) and dated `generated`."""
    lines = [f"# {md_escape(title)}", "", f"Generated {md_escape(generated)}."]
    for section in sections:
        lines += _section(section, 2)
    return "\n".join(lines) + "\n"

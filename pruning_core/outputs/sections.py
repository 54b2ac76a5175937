"""The report's content as plain data: a `Section` is a title and a list of blocks, which any renderer draws.

A capability describes its part of a report once, as sections (`structured.report`, `recovery.report`,
`continual.report`, `export.report`); `render_html` and `render_markdown` turn any list of them into a page.
Nothing here knows about pruning. Text is plain and unescaped (each renderer escapes it for its format); table
cells are already formatted (the section's builder chooses units and digits and says them in the headers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union


@dataclass(frozen=True)
class Paragraph:
    """A paragraph of text; a note is a quieter aside (how a number was measured, what a table means)."""

    text: str
    note: bool = False


@dataclass(frozen=True)
class Callout:
    """Sentences set apart from the rest of the page (the report's summary)."""

    sentences: Sequence[str]


@dataclass(frozen=True)
class Table:
    """A table of formatted cells; the first `text_columns` columns are words (aligned left), the rest numbers."""

    headers: Sequence[str]
    rows: Sequence[Sequence[Any]]
    text_columns: int = 1


@dataclass(frozen=True)
class KeyFacts:
    """Labelled values, one per line ([label, value] pairs): a setting, a protocol, an environment."""

    facts: Sequence[Sequence[Any]]


@dataclass(frozen=True)
class SampleTexts:
    """Texts side by side, one row per prompt (a prompt and what each model wrote), shown whole and wrapped."""

    headers: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class Figure:
    """A chart as a Plotly figure dict ({"data", "layout"}), drawn where the page can draw one (HTML).

    name: the chart's id prefix; the HTML renderer numbers the charts of a page in order ("curves-0", "plan-1").
    title: a heading above the chart, or None where the section's own title says what it shows."""

    name: str
    figure: dict
    title: Optional[str] = None


@dataclass(frozen=True)
class Code:
    """A command or code, shown verbatim in a monospaced block."""

    text: str


@dataclass(frozen=True)
class Section:
    """A titled part of the report; a Section among the blocks is a sub-section, one heading level down.

    anchor: an id for links into the page (HTML), or None."""

    title: str
    blocks: Sequence["Block"]
    anchor: Optional[str] = None


Block = Union[Paragraph, Callout, Table, KeyFacts, SampleTexts, Figure, Code, Section]


"""How pages write numbers with units: the library's formats (`pruning_core.units`, one owner each), so a page,
the report and the CLI write the same size and the same duration alike."""

from __future__ import annotations

from pruning_core.units import format_bytes, format_seconds

__all__ = ["MISSING", "format_bytes", "format_seconds", "table_number", "table_rows"]

#: What a missing number shows in a table (a dash, never "None" or "nan").
MISSING = "–"


def table_number(value, signed: bool = False) -> str:
    """A figure in a table (a perplexity, a BWT): 2 decimals with thousands separators, signed on request
    ("+1.25"), `MISSING` when there is none."""
    return MISSING if value is None else (f"{value:+,.2f}" if signed else f"{value:,.2f}")


def table_rows(rows: list[dict]) -> list[dict]:
    """`rows` as a table shows them: every row has every column (in first-seen order), and a cell a row has no
    value for (absent or None) holds `MISSING`. Streamlit draws a missing cell as the word "None"."""
    columns = list(dict.fromkeys(column for row in rows for column in row))
    return [{column: MISSING if row.get(column) is None else row[column] for column in columns} for row in rows]

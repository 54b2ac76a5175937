"""How pages write numbers with units: the library's formats (`pruning_core.units`, one owner each), so a page,
the report and the CLI write the same size and the same duration alike."""

from __future__ import annotations

from pruning_core.units import format_bytes, format_seconds

__all__ = ["MISSING", "format_bytes", "format_seconds"]

#: What a missing number shows in a table (a dash, never "None" or "nan").
MISSING = "–"


def table_number(value, signed: bool = False) -> str:
    """A figure in a table (a perplexity, a BWT): 2 decimals with thousands separators, signed on request
    ("+1.25"), `MISSING` when there is none."""
    return MISSING if value is None else (f"{value:+,.2f}" if signed else f"{value:,.2f}")

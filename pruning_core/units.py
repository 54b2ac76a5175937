"""How numbers with units are written: bytes and durations, one format each for pages, reports and the CLI.

Bytes are counted in powers of 1000 (the sizes of files a runtime loads, as `pruning_core.claims` words them).
A duration is either an estimate ("about 3 min", rounded: it is not known better than that) or a measured time
("12.5 min"); both switch unit at the same points (90 s, 90 min).
"""

from __future__ import annotations

from typing import Optional


def format_bytes(n: Optional[float]) -> str:
    """'269.0 MB' (powers of 1000), '512 B', or 'unknown'."""
    if n is None:
        return "unknown"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"


def format_seconds(seconds: Optional[float], estimate: bool = True) -> str:
    """A duration in words, or 'unknown' for None.

    estimate=True (a time left or a planned run): 'about 40 s', 'about 3 min', 'about 1.5 h' (at least 1 s).
    estimate=False (a measured time): '42 s', '12.5 min', '1.2 h'.
    """
    if seconds is None:
        return "unknown"
    seconds = max(0.0, float(seconds))
    if not estimate:
        if seconds < 90:
            return f"{seconds:.0f} s"
        return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 5400:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"

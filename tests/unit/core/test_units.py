"""How bytes and durations are written (`pruning_core.units`)."""

from __future__ import annotations

from pruning_core import claims
from pruning_core.units import format_bytes, format_seconds


def test_bytes_in_powers_of_1000():
    assert format_bytes(512) == "512 B" and format_bytes(98_400_000) == "98.4 MB" and format_bytes(None) == "unknown"
    assert claims.format_bytes is format_bytes


def test_durations_estimated_and_measured():
    assert [format_seconds(s) for s in (0.2, 40, 180, 7200, None)] == \
        ["about 1 s", "about 40 s", "about 3 min", "about 2.0 h", "unknown"]
    assert [format_seconds(s, estimate=False) for s in (42, 750, 7200)] == ["42 s", "12.5 min", "2.0 h"]

"""How busy the machine is while something is timed (ground floor): the share of the cores other processes used.

On a shared machine a timing (a speed ratio, an estimate's measured speed) is only as good as the quiet it ran
in; these readings let a figure say how much of the machine others took meanwhile.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Callable, Optional


def cpu_seconds() -> Optional[tuple[float, float]]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process) so far, or None without /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    own = resource.getrusage(resource.RUSAGE_SELF)
    return (sum(fields[:8]) - idle) / ticks, own.ru_utime + own.ru_stime


def others_busy_share(before: Optional[tuple[float, float]], after: Optional[tuple[float, float]],
                      wall_seconds: float) -> Optional[float]:
    """The share of the machine's cores that other processes kept busy between two `cpu_seconds` readings
    (0 = a quiet machine; 0.5 = half the cores): the load average cannot tell, it counts this run's own
    threads and the minute before."""
    if before is None or after is None or wall_seconds <= 0:
        return None
    others = (after[0] - before[0]) - (after[1] - before[1])
    return round(min(1.0, max(0.0, others / (wall_seconds * (os.cpu_count() or 1)))), 3)


def busy_share_during(work: Callable[[], object]) -> Optional[float]:
    """Run `work()` and return `others_busy_share` over it (None where /proc/stat is absent)."""
    before, start = cpu_seconds(), time.perf_counter()
    work()
    return others_busy_share(before, cpu_seconds(), time.perf_counter() - start)

"""Progress reporting by callback (never print in library code).

A progress callback receives `(fraction, message)`: fraction in [0, 1] of the whole task, message a short
human-readable step ("layer 3/30: sparsegpt"). It may raise `JobCancelled` to stop the work cleanly.
"""

from __future__ import annotations

from typing import Callable, Optional

ProgressFn = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:  # noqa: ARG001 - signature of ProgressFn
    """A progress callback that ignores everything."""


def sub_progress(progress: Optional[ProgressFn], start: float, end: float) -> ProgressFn:
    """Map a sub-task's [0, 1] progress onto [start, end] of the parent's progress."""
    parent = progress or no_progress

    def report(fraction: float, message: str) -> None:
        parent(start + (end - start) * min(max(fraction, 0.0), 1.0), message)

    return report

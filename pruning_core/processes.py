"""Whether a process still runs on this machine: for state a process leaves behind (a job's worker, spilled
statistics) that another process must tell apart from a live owner's."""

from __future__ import annotations

import os
from pathlib import Path


def process_exists(pid: int) -> bool:
    """Whether process `pid` exists on this machine and is not a zombie (a dead child not yet waited for)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # Linux: a dead child nobody has waited for still has a pid; its state letter is Z.
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
    except (OSError, IndexError):
        pass
    return True

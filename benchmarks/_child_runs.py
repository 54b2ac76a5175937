"""Shared by the memory benchmarks: run a `prunescope` command in a fresh process and read its peak memory.

A command's peak resident memory is only its own when it runs in a process of its own (a parent that already
loaded a model would add that model to every figure), so each case runs `pruning_core.cli.main.main(argv)` in a
child Python with its own PRUNESCOPE_HOME, which prints its exit code, wall seconds and ru_maxrss as JSON.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CHILD = """
import json, resource, sys, time
from pruning_core.cli.main import main
start = time.perf_counter()
code = main(sys.argv[1:])
print(json.dumps({"code": code, "seconds": time.perf_counter() - start,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def run_command(argv: list[str], home: Path, what: str) -> tuple[dict, str]:
    """Run `prunescope <argv>` in a child process with PRUNESCOPE_HOME=`home`; returns ({"code", "seconds",
    "peak_rss_bytes" (bytes)}, the command's stdout). Exits with the child's output when it failed (`what` names
    the case in that message)."""
    env = {**os.environ, "PRUNESCOPE_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, *argv], capture_output=True, text=True, env=env, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the {what} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1]), proc.stdout


def machine() -> dict:
    """The CPU's model name and SIMD flags (avx*, amx*, fma), the cores and the load average now."""
    name, flags = "", ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = " ".join(f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return {"cpu": name or platform.processor(), "simd_flags": flags, "cores": os.cpu_count(),
            "load_average": os.getloadavg()}

"""THE memory check of a run before it starts: its estimated peak against the memory this machine has free.

A run whose estimate (`jobs.estimates.estimate_job`'s "peak_memory_bytes") exceeds what is available is refused
before any work, in one sentence that names the estimate, what is available and what to change. The CLI (every
command that runs a job, through `cli.common.check_run_fits`) and the dashboard (`app.services.jobs.submit_job`)
both call `check_fits`, so a run is refused in the same words wherever it is started.

Available memory (bytes), in this order:
- `PRUNESCOPE_MEMORY_LIMIT` (e.g. "8GB", "512MiB", "2e9"): an explicit limit (tests, shared machines, a
  container whose /proc/meminfo shows the host's memory);
- else MemAvailable of /proc/meminfo (what the kernel can hand out without swapping), plus this process's own
  resident memory when the run happens in this process (the CLI: the loaded model the estimate counts is
  already resident, so counting it again as used would refuse runs that fit);
- else (no /proc: macOS, Windows) nothing is checked.

Without this check a run that does not fit ends with the kernel's out-of-memory killer: the worker vanishes
(SIGKILL) and, at best, the job runner reports "killed (out of memory?)" (`jobs.runner`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from pruning_core.errors import ConfigError
from pruning_core.units import format_bytes

#: Environment variable holding an explicit memory limit (bytes, or a number with a unit: 8GB, 512MiB).
MEMORY_LIMIT_ENV = "PRUNESCOPE_MEMORY_LIMIT"

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class MemoryRefused(ConfigError):
    """A run's estimated peak memory exceeds the memory available; raised before the run starts."""


@dataclass(frozen=True)
class AvailableMemory:
    """Bytes a run may use on this machine and where the figure comes from (said in the refusal)."""

    bytes: int
    source: str  # e.g. "PRUNESCOPE_MEMORY_LIMIT=8GB", "free on this machine (MemAvailable + this process)"


def parse_bytes(text: str) -> int:
    """Bytes of "8GB", "8 GB", "512MiB", "2e9" or "1024" (powers of 1000 for KB/MB/GB, 1024 for KiB/MiB/GiB).
    ConfigError naming the variable for anything else."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ConfigError(f"{MEMORY_LIMIT_ENV}={text!r} is not a size; give bytes or a number with a unit such "
                          "as 8GB or 512MiB.")
    return int(float(match.group(1)) * _UNITS[unit])


def _meminfo_bytes(field: str, path: Path = Path("/proc/meminfo")) -> Optional[int]:
    """A /proc/meminfo field in bytes (the file gives kB), or None where there is no such file."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(":")
            if name == field:
                return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def resident_bytes() -> int:
    """This process's resident memory now (VmRSS of /proc/self/status), 0 where it cannot be read."""
    return _meminfo_bytes("VmRSS", Path("/proc/self/status")) or 0


def available_memory(in_process: bool, environ: Optional[Mapping[str, str]] = None) -> Optional[AvailableMemory]:
    """The memory a run may use: `MEMORY_LIMIT_ENV` if set, else MemAvailable (+ this process's resident memory
    when `in_process`: the run happens here and its estimate counts what this process already holds, such as
    the loaded model); None where neither can be read (then nothing is checked)."""
    environ = os.environ if environ is None else environ
    limit = (environ.get(MEMORY_LIMIT_ENV) or "").strip()
    if limit:
        return AvailableMemory(parse_bytes(limit), f"{MEMORY_LIMIT_ENV}={limit}")
    free = _meminfo_bytes("MemAvailable")
    if free is None:
        return None
    if in_process:
        return AvailableMemory(free + resident_bytes(), "free on this machine (MemAvailable) plus what this "
                                                        "process already holds")
    return AvailableMemory(free, "free on this machine (MemAvailable)")


#: What to change, in the words of where the run was started (the command line's flags or the dashboard's
#: settings), one entry per remedy: (remedy, words). `changes` drops a remedy the run already took.
CHANGES = {
    "cli": (("bf16", "keep the weights in bf16 (--model NAME@bfloat16: half the weight memory, perplexity within "
                     "0.05 % on the embedded model)"),
            ("calibration", "use fewer calibration windows (--nsamples)"),
            ("gpu", "compute on a GPU (--device cuda)"),
            ("ray", "run the points on Ray workers on other machines (--executor ray --ray-address ADDR)")),
    "dashboard": (("bf16", "keep the weights in bf16 (Setup: the model source ending in @bfloat16)"),
                  ("calibration", "use fewer calibration windows (Setup: Calibration windows)"),
                  ("gpu", "compute on a GPU (prunescope ... --device cuda)"),
                  ("ray", "run the points on Ray workers on other machines (PRUNESCOPE_EXECUTOR=ray with "
                          "PRUNESCOPE_RAY_ADDRESS)")),
}


def changes(where: str, spec: Optional[Mapping] = None) -> str:
    """The remedies of `CHANGES[where]` as one clause, without bf16 when the run's model already keeps its weights
    in bf16 (a source ending in "@bfloat16": advising it would send the user round in a circle)."""
    already_bf16 = str((spec or {}).get("model") or "").endswith("@bfloat16")
    words = [text for remedy, text in CHANGES[where] if not (remedy == "bf16" and already_bf16)]
    return ", ".join(words[:-1]) + ", or " + words[-1]


def refusal_sentence(kind: str, estimate_bytes: int, available: AvailableMemory, force_hint: str = "",
                     where: str = "cli", spec: Optional[Mapping] = None) -> str:
    """The one sentence of a refused run: its estimate, what is available, what to change (`changes`)."""
    hint = f"; or {force_hint} to run anyway" if force_hint else ""
    return (f"This {kind} run needs about {format_bytes(estimate_bytes)} of memory at its peak (estimate) but "
            f"{format_bytes(available.bytes)} is available ({available.source}); to make it fit, "
            f"{changes(where, spec)}{hint}.")


def runs_elsewhere(spec: Optional[Mapping]) -> bool:
    """Whether the job's spec sends its work to Ray workers on a cluster (an address other than this machine):
    their memory is theirs, not this machine's, so this machine's check does not apply."""
    executor = (spec or {}).get("executor") or {}
    return executor.get("kind") == "ray" and str(executor.get("address") or "").strip() not in ("", "local")


def check_fits(kind: str, estimate: Optional[Mapping], *, in_process: bool, spec: Optional[Mapping] = None,
               force: bool = False, force_hint: str = "", where: str = "cli",
               environ: Optional[Mapping[str, str]] = None) -> None:
    """Raise `MemoryRefused` (one sentence) when `estimate`'s "peak_memory_bytes" exceeds `available_memory`.

    kind: the job kind, named in the sentence; estimate: an estimate dict or None (no estimate: nothing to
    check); in_process: the run happens in this process (the CLI) rather than a new worker (the dashboard);
    spec: the job's spec (a run on a remote Ray cluster is not checked here); force: skip the check (the
    caller's explicit escape, e.g. --ignore-memory-limit, named by `force_hint` in the sentence); where: "cli" or
    "dashboard", whose words name what to change."""
    if force or not estimate or estimate.get("peak_memory_bytes") is None or runs_elsewhere(spec):
        return
    available = available_memory(in_process, environ)
    if available is None:
        return
    peak = int(estimate["peak_memory_bytes"])
    if peak > available.bytes:
        raise MemoryRefused(refusal_sentence(kind, peak, available, force_hint, where, spec))


def check_job_fits(kind: str, spec: dict, loaded, store=None, *, in_process: bool, where: str = "dashboard",
                   environ: Optional[Mapping[str, str]] = None) -> Optional[dict]:
    """`check_fits` for a job about to be submitted: its peak memory from `jobs.estimates.peak_memory_estimate`
    (no model forwards: a speed not measured yet changes the time, never the memory). Returns the estimate it
    judged (None for a kind without one); raises `MemoryRefused`."""
    from pruning_core.jobs.estimates import peak_memory_estimate

    try:
        estimate = peak_memory_estimate(kind, spec, loaded, store)
    except Exception:  # noqa: BLE001 - an estimate never blocks a run: a bad spec fails in the job, in its words
        return None
    check_fits(kind, estimate, in_process=in_process, spec=spec, where=where, environ=environ)
    return estimate

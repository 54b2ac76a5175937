"""How the engine's processes allocate memory: glibc's malloc told to keep freed memory for reuse.

Why: one probe of the exact map (8 x 512 tokens through the embedded model) allocates and frees about 2 GB of
activations and kernel scratch space in blocks of 1-25 MB. Under glibc's defaults those blocks went back to the
operating system when freed (munmap, heap trimming) and were faulted in again by the next allocation: about
490,000 page faults per probe, which made it about 15 % slower (4.5 s against 3.9 s on the 2-core EPYC, with
the same kernels and bit-identical results; `benchmarks/final_map_efficiency.py` records the faults per probe).
With the mmap threshold fixed at 32 MB (glibc's ceiling for its own dynamic threshold) and the heap trimmed only
above 8 GB, a warm probe has (almost) no page faults. The cost: freed memory stays with the process for reuse,
so its resident size stays near its peak instead of falling back between probes.

glibc reads these settings when a process starts, so they go into the environment of the processes the engine
starts (job workers, `worker_environment`) and the command line re-executes itself once with them
(`reexec_with_allocator_settings`). A value the user has set is kept. Other C libraries ignore the variables.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping

#: glibc malloc settings (mallopt(3) names them; read from the environment at process start), in bytes.
SETTINGS = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(8 * 2**30)}


def with_allocator_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of `environ` with `SETTINGS` added where the user has not set them."""
    env = dict(environ)
    for name, value in SETTINGS.items():
        env.setdefault(name, value)
    return env


def allocator_settings() -> dict[str, str | None]:
    """The settings as this process got them (None where unset), for benchmark records."""
    return {name: os.environ.get(name) for name in SETTINGS}


def reexec_with_allocator_settings() -> None:
    """Replace this process by the same command started with `SETTINGS`, once, on Linux; else return.

    Call it first thing in an entry point (before work is done or files are opened): the command starts again
    from the beginning with the same arguments. Returns at once when the settings are already in place (so
    the re-executed process goes on), off Linux, or when the interpreter's command line is unknown.
    """
    if sys.platform != "linux" or all(name in os.environ for name in SETTINGS):
        return
    command = getattr(sys, "orig_argv", None)  # the interpreter's own command line, `-m`/`-c` included
    if not command or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, with_allocator_settings(os.environ))

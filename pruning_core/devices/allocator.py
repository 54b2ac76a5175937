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

Keeping freed memory has a price in a long walk: each decoder layer leaves small long-lived blocks (its bit-packed
masks) between the holes its activations left, and the heap's resident size crept up about 45 MB a layer in a
Wanda point on a random model of TinyLlama-1.1B's shape (2.34 GB of bf16 weights, 64 x 512 calibration; peak
4.66 GB under glibc's defaults, 4.74 GB in docs/runs/scale.json). The walk therefore hands the heap's free pages
back once per layer (`release_free_memory`, glibc's malloc_trim): the same point peaked at 3.99 GB (3.97 GB under
these settings) in 279 s against 286 s, since one call per layer costs milliseconds against seconds of layer work
and the pages the next layer faults in again are a few hundred MB; once per batch instead gave no lower peak
(3.96 GB) for 8 % more time. `benchmarks/walk_heap.py` measures it layer by layer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from typing import Callable, Mapping, Optional

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


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Optional[Callable[[int], int]]:
    """glibc's malloc_trim(3), or None where the C library has none (macOS, musl, Windows)."""
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Give the pages of every free block in the heap back to the operating system (glibc's malloc_trim(0));
    returns whether the C library could. Memory that is still in use is untouched, so results never change; a
    later allocation in the same place faults its pages in again. Call it between long steps (the walk does,
    once per decoder layer), not inside a hot loop."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True

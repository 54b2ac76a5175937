"""How soon a trustworthy sensitivity map exists: the default refinement's first map; prints one JSON document.

Measures, on the embedded model from a cold store (no cached statistics):
- seconds from the start of the job to the first complete map (the second-order estimate): calibration
  statistics for the method's masks, then one backward pass per probe window; the phases are split by the
  job's progress messages;
- its Spearman rank agreement with the exact 8 x 512 map over all 210 cells and over the 30 whole-layer values,
  against the exact map stored in docs/runs/embedded-sensitivity.json (same model fingerprint and protocol;
  the exact metric's algorithm is unchanged), or computed here with --full;
- the machine: CPU model and the flags that decide bf16 speed (avx512_bf16, amx_bf16), threads, load average,
  and the bf16 and fp32 matmul rates measured in this run (compare ratios within one run, not absolute times).

    python benchmarks/first_map.py --save docs/runs          # about 1-2 min on 2 cores
    python benchmarks/first_map.py --full --save docs/runs   # also the exact map (about 15 min)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pruning_core.devices.allocator import allocator_settings, reexec_with_allocator_settings  # noqa: E402
from pruning_core.analysis.refinement import refine_sensitivity  # noqa: E402
from pruning_core.analysis.sensitivity import spearman  # noqa: E402
from pruning_core.store import Store  # noqa: E402
from pruning_core.models import load_model  # noqa: E402
from pruning_core.protocol import Protocol  # noqa: E402

REFERENCE = ROOT / "docs" / "runs" / "embedded-sensitivity.json"
FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx2")


def cpu_facts() -> dict:
    """CPU model name and the instruction-set flags that decide bf16 and fp32 matmul speed."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return {"cpu_model": model, "flags": {f: f in flags for f in FLAGS}, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()[0]}


def matmul_rate(dtype: torch.dtype, m: int = 4096, k: int = 576, n: int = 1536, repeats: int = 20) -> float:
    """GFLOP/s of a (m, k) @ (k, n) matmul in `dtype` (the shape of an MLP projection over 4096 tokens)."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9


def flat(document: dict) -> list[float]:
    return [v for row in document["values"] for v in row]


def stored_exact_map(loaded, probe_windows: int, nsamples: int, dtype: str) -> dict | None:
    """The exact map stored in REFERENCE when it was computed on this model with this protocol, else None."""
    if not REFERENCE.exists():
        return None
    stored = json.loads(REFERENCE.read_text())["exact"]
    same = (stored["model"]["fingerprint"] == loaded.fingerprint
            and stored["protocol"]["probe_windows"] == probe_windows
            and stored["protocol"]["nsamples"] == nsamples
            and stored["protocol"]["probe_dtype"] == dtype)
    return stored if same else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe-windows", type=int, default=8)
    parser.add_argument("--nsamples", type=int, default=32, help="calibration windows (the method's statistics)")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="probe dtype")
    parser.add_argument("--full", action="store_true", help="also compute the exact map (the final refinement)")
    parser.add_argument("--save", default=None, help="folder for first-map.json")
    args = parser.parse_args(argv)

    out: dict = {"machine": cpu_facts(), "allocator": allocator_settings(),
                 "matmul_gflops": {"bfloat16": matmul_rate(torch.bfloat16), "float32": matmul_rate(torch.float32)}}
    start = time.perf_counter()
    loaded = load_model("embedded")
    out["load_seconds"] = time.perf_counter() - start
    protocol = Protocol(calib="wiki", nsamples=args.nsamples, seqlen=512, seed=0, eval_windows=8, dtype=args.dtype)
    store = Store(Path(tempfile.mkdtemp(prefix="prunescope-first-map-")) / "store.sqlite")

    phases: dict[str, float] = {}
    clock = {"phase": "start", "since": time.perf_counter()}

    def progress(_fraction: float, message: str) -> None:
        phase = ("statistics" if "statistics" in message else "second-order" if "second-order" in message
                 else "exact" if message.startswith("exact") or "probe" in message else clock["phase"])
        now = time.perf_counter()
        phases[clock["phase"]] = phases.get(clock["phase"], 0.0) + now - clock["since"]
        clock.update(phase=phase, since=now)

    class FirstMapDone(Exception):
        pass

    views: list[tuple[float, dict]] = []
    job_start = time.perf_counter()

    def on_view(view: dict) -> None:
        views.append((time.perf_counter() - job_start, view))
        if not args.full:
            raise FirstMapDone

    try:
        refine_sensitivity(loaded, protocol, "wanda", 0.5, args.probe_windows, store, progress, on_view,
                           dtype=args.dtype)
    except FirstMapDone:
        pass
    progress(1.0, "")
    seconds, first = views[0]
    out["first_map"] = {"seconds": seconds, "seconds_with_load": seconds + out["load_seconds"],
                        "phases_seconds": phases, "metric": first["metric"],
                        "probe_windows": args.probe_windows, "nsamples": args.nsamples, "dtype": args.dtype}

    exact = None
    if args.full:
        exact = next(v for _, v in views if v["metric"] == "exact")
        out["exact_map_seconds"] = next(t for t, v in views if v["metric"] == "exact") - seconds
    elif REFERENCE.exists():
        exact = stored_exact_map(loaded, args.probe_windows, args.nsamples, args.dtype)
        out["exact_source"] = str(REFERENCE.relative_to(ROOT)) if exact else "reference protocol differs"
    if exact is not None:
        out["agreement_with_exact"] = {"cells": spearman(flat(first), flat(exact)),
                                       "whole_layers": spearman(first["layer_values"], exact["layer_values"])}
    return print_and_save(out, args.save, "first-map.json")


def print_and_save(document: dict, folder: str | None, name: str) -> int:
    """Print a benchmark's JSON and, with `folder` (--save), write it there as `name`; the exit status (0)."""
    print(json.dumps(document, indent=2))
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_text(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    reexec_with_allocator_settings()  # as the CLI and job workers run (devices/allocator.py)
    sys.exit(main())

"""How soon a trustworthy sensitivity map exists with `prunescope sensitivity`'s defaults; prints one JSON document.

Measures, on the embedded model from a cold store (no cached statistics), exactly what the command does with
its defaults: the spec comes from the command's own parser and `cli.analysis.sensitivity_spec_from_args`
(calibration windows, probe windows and dtype, method, sparsity), never from a copy of its numbers; extra
command-line options can be given after `--` to measure another setting (they are recorded). Records:
- seconds from the start of the job to the first complete map (the second-order estimate): calibration
  statistics for the method's masks, then one backward pass per probe window; the phases are split by the
  job's progress messages, each with its wall and process CPU seconds;
- process CPU seconds (user + system of this process and all its threads) beside wall seconds, and the share of
  the machine's CPU time the rest of the machine used meanwhile (from /proc/stat), so the time on a quiet
  machine can be judged on a shared one: with 2 torch threads on 2 idle cores, wall ~ CPU / parallelism, where
  parallelism (CPU / wall) is measured on the matmul probe here, when the machine lets it run alone;
- its Spearman rank agreement with the exact 8 x 512 map over all 210 cells and over the 30 whole-layer values,
  against the exact map stored in docs/runs/embedded-sensitivity.json (same model fingerprint; where its
  protocol differs from the command's, the differences are listed beside the figures), or computed here with
  --full (the command's exact map, same protocol);
- the machine: CPU model and the flags that decide bf16 speed (avx512_bf16, amx_bf16), threads, load average,
  and the bf16 and fp32 matmul rates measured in this run (compare ratios within one run, not absolute times).

    python benchmarks/first_map.py --save docs/runs          # about 1-2 min on 2 quiet cores
    python benchmarks/first_map.py --full --save docs/runs   # also the exact map (tens of minutes)
    python benchmarks/first_map.py -- --nsamples 32          # another setting of the command
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
    stored = reference_exact_map(loaded, probe_windows)
    same = stored is not None and (stored["protocol"]["nsamples"] == nsamples
                                   and stored["protocol"]["probe_dtype"] == dtype)
    return stored if same else None


def reference_exact_map(loaded, probe_windows: int) -> dict | None:
    """The exact map stored in REFERENCE when it was computed on this model with this many probe windows, else
    None (its calibration size and dtypes may differ from a run's: the caller lists them)."""
    if not REFERENCE.exists():
        return None
    stored = json.loads(REFERENCE.read_text())["exact"]
    same = (stored["model"]["fingerprint"] == loaded.fingerprint
            and stored["protocol"]["probe_windows"] == probe_windows)
    return stored if same else None


def command_spec(extra: list[str], out_dir: str):
    """The `SensitivitySpec` `prunescope sensitivity --out out_dir [extra]` runs (its parser's defaults)."""
    from pruning_core.cli.analysis import sensitivity_spec_from_args
    from pruning_core.cli.main import build_parser

    return sensitivity_spec_from_args(build_parser().parse_args(["sensitivity", "--out", out_dir, *extra]))


def process_cpu_seconds() -> float:
    """User + system CPU seconds of this process and all its threads so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine since boot (/proc/stat), or (0, 0) where unreadable."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


class CpuClock:
    """Wall seconds, this process's CPU seconds, and the machine's busy share over an interval."""

    def __init__(self):
        self.wall, self.cpu, self.jiffies = time.perf_counter(), process_cpu_seconds(), machine_jiffies()

    def read(self) -> dict:
        wall, cpu = time.perf_counter() - self.wall, process_cpu_seconds() - self.cpu
        busy, total = (a - b for a, b in zip(machine_jiffies(), self.jiffies))
        ticks = os.sysconf("SC_CLK_TCK")
        cores = os.cpu_count() or 1
        machine_busy = busy / total if total else None
        own = cpu / (wall * cores) if wall > 0 else None
        return {"wall_seconds": wall, "cpu_seconds": cpu, "cpu_per_wall": cpu / wall if wall > 0 else None,
                "machine_busy_share": machine_busy,
                "others_busy_share": (max(0.0, machine_busy - own) if machine_busy is not None and own is not None
                                      else None),
                "machine_busy_cpu_seconds": busy / ticks}


def parallelism(repeats: int = 40) -> dict:
    """CPU seconds per wall second of a fp32 matmul loop with the torch threads used here: on an idle machine
    the quiet-machine wall time of CPU-bound work is about its CPU seconds divided by this."""
    a, b = torch.randn(4096, 576), torch.randn(576, 1536)
    clock = CpuClock()
    for _ in range(repeats):
        a @ b
    return clock.read()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also compute the exact map (the final refinement)")
    parser.add_argument("--save", default=None, help="folder for first-map.json")
    parser.add_argument("--scale", nargs=3, metavar=("RUN", "REFERENCE", "QUIET_SECONDS"), default=None,
                        help="no measurement: write RUN's JSON with its quiet-machine time estimated from REFERENCE, "
                             "a run made at the same time (same load) of a setting that took QUIET_SECONDS (first map "
                             "+ load) on the quiet machine")
    parser.add_argument("command", nargs="*", help="after --: options of `prunescope sensitivity` (default none)")
    args = parser.parse_args(argv)
    if args.scale:
        run, reference = (json.loads(Path(p).read_text()) for p in args.scale[:2])
        return print_and_save(scaled_by_reference(run, reference, float(args.scale[2])), args.save, "first-map.json")

    home = Path(tempfile.mkdtemp(prefix="prunescope-first-map-"))
    job = command_spec(list(args.command), str(home / "out"))
    protocol, sparsity = job.protocol, job.sparsities[0]
    dtype = job.dtype or protocol.dtype  # the exact map's probe dtype (compute_sensitivity's, when unset)
    out: dict = {"machine": cpu_facts(), "allocator": allocator_settings(),
                 "matmul_gflops": {"bfloat16": matmul_rate(torch.bfloat16), "float32": matmul_rate(torch.float32)},
                 "parallelism_probe": parallelism(),
                 "command": {"argv": ["prunescope", "sensitivity", *args.command, "--out", "DIR"],
                             "spec": job.to_dict()}}
    clock = CpuClock()
    loaded = load_model(job.model)
    out["load"] = clock.read()
    store = Store(home / "store.sqlite")

    phases: dict[str, dict] = {}
    current = {"phase": "start", "clock": CpuClock()}

    def progress(_fraction: float, message: str) -> None:
        phase = ("statistics" if "statistics" in message else "second-order" if "second-order" in message
                 else "exact" if message.startswith("exact") or "probe" in message else current["phase"])
        if phase == current["phase"]:
            return
        close_phase()
        current.update(phase=phase, clock=CpuClock())

    def close_phase() -> None:
        reading = current["clock"].read()
        before = phases.get(current["phase"], {"wall_seconds": 0.0, "cpu_seconds": 0.0})
        phases[current["phase"]] = {k: before[k] + reading[k] for k in ("wall_seconds", "cpu_seconds")}

    class FirstMapDone(Exception):
        pass

    views: list[tuple[dict, dict]] = []
    job_clock = CpuClock()

    def on_view(view: dict) -> None:
        views.append((job_clock.read(), view))
        if not args.full:
            raise FirstMapDone

    try:
        refine_sensitivity(loaded, protocol, job.method, sparsity, int(job.probe_windows), store, progress,
                           on_view, dtype=job.dtype, layers=None if job.layers is None else list(job.layers))
    except FirstMapDone:
        pass
    close_phase()
    timing, first = views[0]
    out["first_map"] = {**timing, "seconds": timing["wall_seconds"],
                        "seconds_with_load": timing["wall_seconds"] + out["load"]["wall_seconds"],
                        "cpu_seconds_with_load": timing["cpu_seconds"] + out["load"]["cpu_seconds"],
                        "phases": phases, "metric": first["metric"], "probe_windows": int(job.probe_windows),
                        "nsamples": first["protocol"]["nsamples"], "protocol_nsamples": protocol.nsamples,
                        "dtype": first["protocol"]["probe_dtype"], "exact_map_dtype": dtype}
    quiet = out["parallelism_probe"]["cpu_per_wall"]
    out["first_map"]["quiet_machine_estimate_seconds"] = {
        "cpu_over_2": out["first_map"]["cpu_seconds_with_load"] / 2,
        "cpu_over_measured_parallelism": out["first_map"]["cpu_seconds_with_load"] / quiet if quiet else None}

    exact = None
    if args.full:
        exact = next(v for _, v in views if v["metric"] == "exact")
        out["exact_map_seconds"] = next(t["wall_seconds"] for t, v in views if v["metric"] == "exact") \
            - timing["wall_seconds"]
        out["exact_source"] = "computed here with the command's protocol"
    elif REFERENCE.exists():
        exact = reference_exact_map(loaded, int(job.probe_windows))
        if exact is not None:
            out["exact_source"] = str(REFERENCE.relative_to(ROOT))
            mine = {**first["protocol"]}
            out["exact_protocol_differences"] = {
                name: {"reference": exact["protocol"].get(name), "first_map": mine.get(name)}
                for name in ("nsamples", "dtype", "probe_dtype", "seqlen", "seed", "calib", "probe_windows")
                if exact["protocol"].get(name) != mine.get(name)}
        else:
            out["exact_source"] = "reference is of another model or probe"
    if exact is not None:
        out["agreement_with_exact"] = {"cells": spearman(flat(first), flat(exact)),
                                       "whole_layers": spearman(first["layer_values"], exact["layer_values"])}
    return print_and_save(out, args.save, "first-map.json")


def scaled_by_reference(run: dict, reference: dict, quiet_seconds: float) -> dict:
    """`run` with "quiet_machine_estimate": its first map's time on the quiet machine, as quiet_seconds (the
    reference setting's measured quiet time) x the ratio of the two runs' process CPU seconds. Two runs made at
    the same time share the machine's load, so the CPU that busy cores add (threads spinning at barriers while
    their partner waits for a core, caches shared with other work) inflates both alike, which the plain
    CPU / 2 rule does not undo."""
    mine, theirs = run["first_map"]["cpu_seconds_with_load"], reference["first_map"]["cpu_seconds_with_load"]
    return {**run, "quiet_machine_estimate": {
        "seconds_with_load": quiet_seconds * mine / theirs, "cpu_ratio_to_reference": mine / theirs,
        "reference": {"command": reference["command"]["argv"], "quiet_seconds_with_load": quiet_seconds,
                      "first_map": reference["first_map"], "machine": reference["machine"]},
        "method": "quiet seconds of the reference setting x (CPU seconds of this run / CPU seconds of the "
                  "reference run made at the same time on the same machine)"}}


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

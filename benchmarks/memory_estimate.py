"""Peak memory a run's estimate says against the peak it really reaches (issue 29: memory known before a run).

Runs `prunescope sweep` (one point each: magnitude, Wanda and SparseGPT in pruned propagation, SparseGPT in dense
propagation) on `--model` (default the embedded SmolLM2-135M), each in its own process with a fresh
PRUNESCOPE_HOME, and reads the estimate line the command prints before its work ("estimate: ..., peak memory
X") and the child's peak resident memory (ru_maxrss). Reports estimate / measured per case (target: within
30 %), with the machine's facts. The memory check (`jobs.memory_check`) refuses a run by this estimate, so an
estimate far below the measured peak would let through a run the system then kills.

Usage: `python benchmarks/memory_estimate.py [--model embedded] [--nsamples 32] [--out docs/runs/memory-estimate.json]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: (method, propagation) of each case.
CASES = (("magnitude", "pruned"), ("wanda", "pruned"), ("sparsegpt", "pruned"), ("sparsegpt", "dense"))
TARGET = 0.30

CHILD = """
import json, resource, sys, time
from pruning_core.cli.main import main
start = time.perf_counter()
code = main(sys.argv[1:])
print(json.dumps({"code": code, "seconds": time.perf_counter() - start,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

_UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def run_case(model: str, method: str, propagation: str, nsamples: int, seqlen: int, home: Path, out: Path) -> dict:
    argv = ["sweep", "--model", model, "--calib", "wiki", "--eval", "wiki", "--methods", method,
            "--sparsities", "0.5", "--propagation", propagation, "--nsamples", str(nsamples), "--seqlen",
            str(seqlen), "--eval-windows", "8", "--ignore-memory-limit", "--out", str(out)]
    env = {**os.environ, "PRUNESCOPE_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, env=env, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    said = re.search(r"^estimate: .*?peak memory ([0-9.,]+) (B|KB|MB|GB|TB)", proc.stdout, re.M)
    if proc.returncode != 0 or not lines or said is None:
        raise SystemExit(f"the {method} {propagation} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    measured = json.loads(lines[-1])
    estimate = float(said.group(1).replace(",", "")) * _UNITS[said.group(2)]
    return {"method": method, "propagation": propagation, "estimate_bytes": int(estimate),
            "measured_peak_rss_bytes": measured["peak_rss_bytes"], "seconds": round(measured["seconds"], 1),
            "estimate_over_measured": round(estimate / measured["peak_rss_bytes"], 3)}


def machine() -> dict:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    start_load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i, (method, propagation) in enumerate(CASES):
            rows.append(run_case(args.model, method, propagation, args.nsamples, args.seqlen, tmp / f"home-{i}",
                                 tmp / f"out-{i}"))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    worst = max(abs(r["estimate_over_measured"] - 1) for r in rows)
    report = {"benchmark": "memory_estimate", "model": args.model, "nsamples": args.nsamples, "seqlen": args.seqlen,
              "cases": rows, "worst_relative_error": round(worst, 3), "target": TARGET, "meets_target": worst <= TARGET,
              "machine": {**machine(), "load_average_start": start_load},
              "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

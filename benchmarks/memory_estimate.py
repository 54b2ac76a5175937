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
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _child_runs import machine, run_command  # noqa: E402

#: (method, propagation) of each case.
CASES = (("magnitude", "pruned"), ("wanda", "pruned"), ("sparsegpt", "pruned"), ("sparsegpt", "dense"))
TARGET = 0.30

_UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def run_case(model: str, method: str, propagation: str, nsamples: int, seqlen: int, home: Path, out: Path) -> dict:
    argv = ["sweep", "--model", model, "--calib", "wiki", "--eval", "wiki", "--methods", method,
            "--sparsities", "0.5", "--propagation", propagation, "--nsamples", str(nsamples), "--seqlen",
            str(seqlen), "--eval-windows", "8", "--ignore-memory-limit", "--out", str(out)]
    measured, stdout = run_command(argv, home, f"{method} {propagation}")
    said = re.search(r"^estimate: .*?peak memory ([0-9.,]+) (B|KB|MB|GB|TB)", stdout, re.M)
    if said is None:
        raise SystemExit(f"the {method} {propagation} run printed no estimate:\n{stdout[-2000:]}")
    estimate = float(said.group(1).replace(",", "")) * _UNITS[said.group(2)]
    return {"method": method, "propagation": propagation, "estimate_bytes": int(estimate),
            "measured_peak_rss_bytes": measured["peak_rss_bytes"], "seconds": round(measured["seconds"], 1),
            "estimate_over_measured": round(estimate / measured["peak_rss_bytes"], 3)}


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

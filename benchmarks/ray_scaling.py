"""Ray scaling benchmark (issue 17): one sweep on the local executor, on Ray with 1 worker and with 2 workers.

The sweep: Wanda (pruned propagation, so every point is one full layer walk of about equal cost) at `--points`
sparsities on the embedded model, 16 x 256 wiki calibration windows (seed 0), 8 wiki evaluation windows. Each
configuration runs in its own process with a fresh, empty PRUNESCOPE_HOME (nothing cached: dense perplexity,
statistics and points are all computed; only the converted embedded model is shared, as in the tests), and
Ray, when used, is started by the run itself, so its start-up is part of the wall time.

Reported per configuration (from `run_sweep`'s own "execution" record and the points' timings): the wall time
of the whole run (model load to last point), the driver's serial seconds (model load, prepare: windows, dense
evaluation, plans, store checks; Ray start-up), the points phase (which includes each worker's own start:
process, imports, model load, listed apart), the summed compute of the points (prune + evaluation seconds as
each worker measured them), the load average before and after, and whether the points equal the local
executor's. Then: the speed-up of 2 workers over 1 (wall and points phase), the serial fraction of the
1-worker run (driver serial seconds / wall; with the workers' start, which more workers do not shorten, as a
second figure), and what Amdahl's law predicts from each for 2 workers, with the machine's facts.
On a 2-core machine that also runs other work, the speed-up can only be as good as the idle cores allow:
read it beside the load average.

Usage: `python benchmarks/ray_scaling.py [--points 8] [--out docs/runs/ray-scaling.json]`; `--quick` runs a
tiny random model in seconds to check that the script works (its numbers mean nothing; it writes a file only
with `--out`). Needs `pip install '.[ray]'`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FULL = {"model": "embedded", "calib": "wiki", "eval": "wiki", "nsamples": 16, "seqlen": 256, "eval_windows": 8}
QUICK = {"model": "tiny-llama", "calib": "news", "eval": "news", "nsamples": 4, "seqlen": 32, "eval_windows": 4}
#: (name, executor kind, workers) in run order.
CONFIGURATIONS = [("local", "local", 1), ("ray_1", "ray", 1), ("ray_2", "ray", 2)]


def sparsities(points: int) -> list[float]:
    """`points` sparsities evenly from 0.3 to 0.8 (rounded to 0.001)."""
    if points == 1:
        return [0.5]
    return [round(0.3 + 0.5 * i / (points - 1), 3) for i in range(points)]


def run_one(settings: dict, points: int, kind: str, workers: int) -> dict:
    """One sweep in this process (called in a child process); returns its timings and points."""
    from pruning_core.analysis.sweep import SweepSpec, run_sweep
    from pruning_core.executors.base import ExecutorConfig
    from pruning_core.protocol import Protocol

    spec = SweepSpec(model=settings["model"], methods=("wanda",), sparsities=tuple(sparsities(points)),
                     eval_corpora=(settings["eval"],), propagation="pruned",
                     protocol=Protocol(calib=settings["calib"], nsamples=settings["nsamples"],
                                       seqlen=settings["seqlen"], eval_windows=settings["eval_windows"]))
    load_before = os.getloadavg()
    start = time.perf_counter()
    results = run_sweep(spec, store=None, executor=ExecutorConfig(kind=kind, workers=workers))
    wall = time.perf_counter() - start
    execution = results["execution"]
    seconds = execution["seconds"]
    serial = seconds["load"] + seconds["prepare"] + seconds["startup"]
    return {
        "executor": kind, "workers": workers, "wall_seconds": round(wall, 3),
        "serial_seconds": round(serial, 3),
        "serial_parts": {k: round(seconds[k], 3) for k in ("load", "prepare", "startup")},
        "points_phase_seconds": round(seconds["points"], 3),
        "worker_start_seconds": [round(x, 3) for x in execution["worker_start_seconds"]],
        "points_compute_seconds": round(sum(p["prune_seconds"] + p["eval_seconds"] for p in results["points"]), 3),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "points": [{"target_sparsity": p["target_sparsity"], "sparsity": p["sparsity"], "ppl": p["ppl"]}
                   for p in results["points"]],
    }


def _child(settings: dict, points: int, kind: str, workers: int, home: Path) -> dict:
    """`run_one` in a fresh process with an empty PRUNESCOPE_HOME (the converted model cache is shared)."""
    env = dict(os.environ, PRUNESCOPE_HOME=str(home))
    env.setdefault("PRUNESCOPE_MODEL_CACHE", str(Path.home() / ".cache" / "prunescope" / "models"))
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(
        {"settings": settings, "points": points, "kind": kind, "workers": workers})]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} x{workers} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def same_points(a: list[dict], b: list[dict], rel: float = 1e-6) -> bool:
    """Whether two runs' points agree (sparsity and every perplexity within `rel`)."""
    def close(x: float, y: float) -> bool:
        return abs(x - y) <= rel * max(abs(x), abs(y))

    return len(a) == len(b) and all(
        close(p["sparsity"], q["sparsity"]) and p["ppl"].keys() == q["ppl"].keys()
        and all(close(p["ppl"][c], q["ppl"][c]) for c in p["ppl"]) for p, q in zip(a, b))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=8, help="sweep points (Wanda sparsities), default 8")
    parser.add_argument("--quick", action="store_true", help="tiny random model: checks the script in seconds")
    parser.add_argument("--out", default=None, help="JSON file (default docs/runs/ray-scaling.json; none with --quick)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(run_one(job["settings"], job["points"], job["kind"], job["workers"])))
        return 0
    if args.points < 1:
        parser.error("--points must be at least 1")
    settings = QUICK if args.quick else FULL

    with tempfile.TemporaryDirectory(prefix="prunescope-ray-scaling-") as tmp:
        runs = {name: _child(settings, args.points, kind, workers, Path(tmp) / name)
                for name, kind, workers in CONFIGURATIONS}

    from pruning_core.structured.speed import machine_facts

    one, two = runs["ray_1"], runs["ray_2"]
    serial_fraction = one["serial_seconds"] / one["wall_seconds"]
    fixed_fraction = (one["serial_seconds"] + max(one["worker_start_seconds"], default=0.0)) / one["wall_seconds"]
    report = {
        "what": f"Wanda sweep of {args.points} points, pruned propagation, {settings['nsamples']} x "
                f"{settings['seqlen']} {settings['calib']} calibration, {settings['eval_windows']} "
                f"{settings['eval']} evaluation windows, fresh store per run",
        "settings": {**settings, "points": args.points, "sparsities": sparsities(args.points),
                     "quick": args.quick},
        "runs": {name: {k: v for k, v in run.items() if k != "points"} for name, run in runs.items()},
        "speedup_2_over_1_workers": round(one["wall_seconds"] / two["wall_seconds"], 3),
        "points_phase_speedup_2_over_1_workers": round(one["points_phase_seconds"] / two["points_phase_seconds"], 3),
        "speedup_ray_2_over_local": round(runs["local"]["wall_seconds"] / two["wall_seconds"], 3),
        "serial_fraction_1_worker": round(serial_fraction, 3),
        "amdahl_limit_2_workers": round(1.0 / (serial_fraction + (1.0 - serial_fraction) / 2.0), 3),
        "serial_fraction_with_worker_start_1_worker": round(fixed_fraction, 3),
        "amdahl_limit_with_worker_start_2_workers": round(1.0 / (fixed_fraction + (1.0 - fixed_fraction) / 2.0), 3),
        "points_equal_local": {name: same_points(run["points"], runs["local"]["points"])
                               for name, run in runs.items() if name != "local"},
        "machine": machine_facts(),
        "cpu_count": os.cpu_count(),
    }
    text = json.dumps(report, indent=1)
    print(text)
    out = args.out or (None if args.quick else str(REPO / "docs" / "runs" / "ray-scaling.json"))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

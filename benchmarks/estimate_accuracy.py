"""Estimate accuracy (issue 26): estimated against measured seconds for a small real run of every run kind.

For each case the estimate a page shows (`pruning_core.jobs.estimates.estimate_job`, this machine's measured
speed) is made first, then the job runs in this process exactly as a worker runs it (`jobs.runner.JOB_KINDS`:
model load included), into a fresh PRUNESCOPE_HOME per model (the speed is measured once per model, as the
dashboard's short job does; nothing else is stored before a case, except where the case says "stored": the same
sweep again, whose estimate must be about its load).

Reported per case: estimated and actual wall seconds, their ratio (actual / estimated), the process's CPU
seconds (user + system, every thread) and the share of the machine's cores that other processes kept busy
during the run (`machine_load.others_busy_share`; 0 = quiet). On a shared machine the wall time stretches with
that share while CPU seconds stretch much less: read the ratio beside both. The summary gives the spread of the
ratios (min, median, max, and the factor within which every case lies).

Models: `tiny-llama` (the random test model; fixed per-call costs dominate it) with 4 x 32-token calibration
windows and 4 evaluation windows, and (without --quick) the embedded SmolLM2-135M with 4 x 128-token windows and
2 evaluation windows.

Usage: `python benchmarks/estimate_accuracy.py [--quick] [--out docs/runs/estimate-accuracy.json]`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _cases(model: str, protocol: dict, out_dir: Path) -> list[tuple[str, str, dict]]:
    """(label, job kind, spec dict) of the runs measured on `model`."""
    from pruning_core.allocation.budget import BudgetSpec
    from pruning_core.analysis.sensitivity import SensitivitySpec
    from pruning_core.analysis.sweep import SweepSpec
    from pruning_core.analysis.whatif import WhatIfSpec
    from pruning_core.continual.run import ContinualSpec
    from pruning_core.protocol import Protocol
    from pruning_core.recovery.run import RecoverySpec
    from pruning_core.setting import Setting
    from pruning_core.structured.run import StructuredSpec

    p = Protocol(**protocol)
    corpus = p.calib
    tiny = model.startswith("tiny-")
    sparsities = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7) if tiny else (0.4, 0.6)
    sweep = SweepSpec(model=model, methods=("wanda",), sparsities=sparsities, eval_corpora=(corpus,), protocol=p)
    cases = [
        ("sweep wanda pruned", "sweep", sweep.to_dict()),
        ("sweep wanda pruned, every point stored", "sweep", sweep.to_dict()),
        ("sweep magnitude+wanda dense", "sweep",
         SweepSpec(model=model, methods=("magnitude", "wanda"), sparsities=sparsities, eval_corpora=(corpus,),
                   protocol=p, propagation="dense").to_dict()),
        ("what-if sparsegpt 50 %", "whatif",
         {**WhatIfSpec(model=model, protocol=p, setting=Setting(method="sparsegpt", sparsity=0.5)).to_dict(),
          "eval_corpora": [corpus]}),
        ("structured 20 % (no speed timing)", "structured",
         StructuredSpec(model=model, protocol=p, ratios=(0.2,), max_new_tokens=8).to_dict()),
        ("export wanda 50 % (no heatmap)", "export",
         {"model": model, "protocol": p.to_dict(), "out_dir": str(out_dir / f"export-{model}"),
          "options": {"method": "wanda", "sparsity": 0.5, "eval_corpora": [corpus], "heatmap": False,
                      "max_new_tokens": 8, "prompts": ["The history of"]}}),
    ]
    if tiny:  # the longer kinds only on the tiny model: the embedded one would take the machine for an hour
        cases += [
            ("sweep sparsegpt pruned", "sweep",
             SweepSpec(model=model, methods=("sparsegpt",), sparsities=(0.3, 0.5, 0.7), eval_corpora=(corpus,),
                       protocol=p).to_dict()),
            ("sensitivity map (automatic: first view, then exact)", "sensitivity",
             SensitivitySpec(model=model, protocol=p, method="wanda", sparsities=(0.5,), probe_windows=4).to_dict()),
            ("structured 20 %, 30 % with speed timing", "structured",
             StructuredSpec(model=model, protocol=p, ratios=(0.2, 0.3), speed=True, max_new_tokens=8,
                            speed_settings={"prefill_tokens": 64, "decode_tokens": 8, "repeats": 2}).to_dict()),
            ("continual news -> wiki, 2 strategies", "continual",
             ContinualSpec(model=model, protocol=p, domains=("news", "wiki"), strategies=("sequential", "joint"),
                           setting=Setting(method="wanda", sparsity=0.5, propagation="dense",
                                           allocation="uniform")).to_dict()),
            ("recovery 6 steps", "recovery",
             RecoverySpec(model=model, protocol=p, train_corpus=corpus, max_new_tokens=8,
                          train={"steps": 6, "batch_size": 2, "seqlen": 32, "eval_every": 3}).to_dict()),
            ("budget search wanda +20 %", "budget",
             BudgetSpec(model=model, protocol=p, setting=Setting(method="wanda", allocation="uniform"),
                        corpus=corpus, max_increase=0.2, coarse_step=0.2, resolution=0.05).to_dict()),
            ("export wanda 50 % with heatmap and a curve", "export",
             {"model": model, "protocol": p.to_dict(), "out_dir": str(out_dir / f"export2-{model}"),
              "options": {"method": "wanda", "sparsity": 0.5, "eval_corpora": [corpus], "heatmap": True,
                          "curve_sparsities": [0.3, 0.7], "max_new_tokens": 8}}),
        ]
    return cases


def _run_case(kind: str, spec: dict, store) -> dict:
    """Estimate, then run the job as a worker would; wall and CPU seconds and the others' busy share."""
    from pruning_core.jobs.estimates import estimate_job
    from pruning_core.jobs.runner import JOB_KINDS
    from pruning_core.machine_load import cpu_seconds, others_busy_share
    from pruning_core.models import load_model

    loaded = load_model(spec["model"])  # the page's model (cached in the dashboard's process)
    estimate = estimate_job(kind, spec, loaded, store)
    module, name = JOB_KINDS[kind].split(":")
    job = getattr(importlib.import_module(module), name)
    before, start, cpu = cpu_seconds(), time.perf_counter(), time.process_time()
    job(spec, store, lambda fraction, message: None)
    wall = time.perf_counter() - start
    return {"estimated_s": round(estimate["seconds"], 3), "actual_s": round(wall, 3),
            "ratio_actual_to_estimated": round(wall / max(estimate["seconds"], 1e-9), 3),
            "process_cpu_s": round(time.process_time() - cpu, 3),
            "others_busy_share": others_busy_share(before, cpu_seconds(), wall),
            "first_view_estimated_s": (round(estimate["first_view_seconds"], 3)
                                       if "first_view_seconds" in estimate else None),
            "estimated_breakdown_s": {k: round(v, 3) for k, v in estimate["breakdown"].items()}}


def summarize(rows: list[dict]) -> dict:
    """The spread of actual / estimated over the cases (a sub-second estimate, a stored sweep's load, excluded:
    its ratio is noise)."""
    ratios = [r["ratio_actual_to_estimated"] for r in rows if "ratio_actual_to_estimated" in r
              and r["estimated_s"] > 0.5]
    factor = max(max(ratios), 1 / min(ratios)) if ratios else None
    return {"cases": len(ratios), "ratio_min": min(ratios, default=None),
            "ratio_median": statistics.median(ratios) if ratios else None, "ratio_max": max(ratios, default=None),
            "every_case_within_factor": round(factor, 2) if factor else None,
            "note": "ratio = actual / estimated wall seconds; read beside others_busy_share (the share of the cores "
                    "other processes used during the run) and process_cpu_s"}


def _report(rows: list[dict], finished: bool) -> dict:
    from pruning_core.structured.speed import machine_facts

    return {"benchmark": "estimate_accuracy", "finished": finished, "machine": machine_facts(),
            "load_average_end": [round(x, 2) for x in os.getloadavg()], "cases": rows, "summary": summarize(rows)}


def run(models: list[tuple[str, dict]], out: Path | None = None) -> dict:
    from pruning_core.analysis.estimates import measured_speed
    from pruning_core.models import load_model
    from pruning_core.protocol import Protocol
    from pruning_core.store import Store

    rows = []
    with tempfile.TemporaryDirectory(prefix="estimate-accuracy-") as tmp:
        for model, protocol in models:
            home = Path(tmp) / model
            os.environ["PRUNESCOPE_HOME"] = str(home)
            store = Store(home / "prunescope.sqlite")
            p = Protocol(**protocol)
            speed = measured_speed(load_model(model), p.seqlen, p.dtype, store)  # the dashboard's short job
            rows.append({"model": model, "measured_speed": speed})
            for label, kind, spec in _cases(model, protocol, Path(tmp)):
                row = {"model": model, "case": label, "kind": kind, **_run_case(kind, spec, store)}
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
                if out is not None:  # after every case: a run stopped early keeps what it measured
                    out.write_text(json.dumps(_report(rows, False), indent=1) + "\n")
    return _report(rows, True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model only")
    parser.add_argument("--out", default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    models = [("tiny-llama", {"calib": "news", "nsamples": 4, "seqlen": 32, "eval_windows": 4, "batch_size": 4})]
    if not args.quick:
        models.append(("embedded", {"calib": "wiki", "nsamples": 4, "seqlen": 128, "eval_windows": 2,
                                    "batch_size": 4}))
    out = Path(args.out) if args.out else None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
    report = run(models, out)
    text = json.dumps(report, indent=1)
    print(text)
    if out is not None:
        out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Continual pruning benchmark (issue 16): which strategy forgets least on a sequence of domains, and at what cost.

On the embedded model, wiki -> news -> pydocs, Wanda at 50 % (dense-propagation statistics, one calibration
walk per domain shared by every strategy), 64 x 512 calibration windows per domain, 32 evaluation windows per
domain: the R matrix (R[t][i] = perplexity on domain i after step t), BWT (mean over i < T of R[T][i] - R[i][i],
positive = forgetting), average perplexity after the last step and mask overlap of `latest`, `sequential`,
`accumulated` (running mean of the activation statistics), `copal` and `joint` (all domains at once: the
non-continual reference), and the work: the run's seconds against the sum of its prune and evaluation work done
once (`work` of the result; target <= 1.5x).
Adapters (`--only adapters`, "adapters" in the JSON): the same sequence on the Wanda-50 % model, one masked LoRA
adapter per domain routed by the selector against one shared adapter trained on every domain in turn (ConPET),
a fixed number of steps per domain (so the figures do not depend on the machine's load): selector accuracy on
held-out windows (target >= 95 %) and forgetting of earlier domains (per-domain BWT / shared BWT, target <= 0.1).

Every figure comes from `continual.run.run_continual` (the CLI's and dashboard's path). Resumable through the
store (finished steps are skipped). Usage: `python benchmarks/continual.py [--out docs/runs/continual.json]`;
`--quick` runs a tiny random model in seconds (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pruning_core.continual.run import ContinualSpec, run_continual  # noqa: E402
from pruning_core.store import Store  # noqa: E402
from pruning_core.models.loading import load_model  # noqa: E402
from pruning_core.protocol import Protocol  # noqa: E402
from pruning_core.structured.speed import machine_facts  # noqa: E402

FULL = {"model": "embedded", "domains": ["wiki", "news", "pydocs"], "method": "wanda", "sparsity": 0.5,
        "nsamples": 64, "seqlen": 512, "eval_windows": 32,
        "strategies": ["latest", "sequential", "accumulated", "copal", "joint"]}
QUICK = {**FULL, "model": "tiny-llama", "nsamples": 4, "seqlen": 64, "eval_windows": 4}
#: Training of every domain's adapter (and of the shared one at each step): rank 8 on every linear.
#: eval_windows: per domain for the R matrices (the selector is scored on the held-out windows of every domain).
ADAPTERS = {"train": {"steps": 40, "batch_size": 4, "seqlen": 256, "eval_every": 0}, "rank": 8, "eval_windows": 16}
QUICK_ADAPTERS = {"train": {"steps": 4, "batch_size": 2, "seqlen": 32, "eval_every": 0}, "rank": 2,
                  "eval_windows": 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/runs/continual.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny random model, seconds: checks the script only")
    parser.add_argument("--adapter-steps", type=int, default=None,
                        help="training steps of every adapter (default: ADAPTERS' 40)")
    parser.add_argument("--only", default="strategies,adapters",
                        help="comma-separated parts to run: strategies (continual pruning), adapters (ConPET)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else FULL
    loaded = load_model(settings["model"])
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    if "strategies" in parts:
        report.update(_strategies(settings, loaded))
        _save(out, report)
    if "adapters" in parts:
        adapters = QUICK_ADAPTERS if args.quick else ADAPTERS
        if args.adapter_steps:
            adapters = {**adapters, "train": {**adapters["train"], "steps": args.adapter_steps}}
        report["adapters"] = _adapters(settings, adapters, loaded)
        _save(out, report)
    print(json.dumps({"checks": report.get("checks"), "adapters": (report.get("adapters") or {}).get("checks")},
                     indent=1))


def _save(out: Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))


def _progress(f: float, m: str) -> None:
    print(f"  [{f:5.1%}] {m}", file=sys.stderr, flush=True)


def _strategies(settings: dict, loaded) -> dict:
    spec = ContinualSpec(model=settings["model"], domains=tuple(settings["domains"]), method=settings["method"],
                         sparsity=settings["sparsity"], strategies=tuple(settings["strategies"]),
                         protocol=Protocol(nsamples=settings["nsamples"], seqlen=settings["seqlen"], seed=0,
                                           eval_windows=settings["eval_windows"]))
    clock = time.perf_counter()
    result = run_continual(spec, loaded=loaded, store=Store(), progress=_progress)
    wall = time.perf_counter() - clock
    strategies = result["strategies"]
    table = {name: {"bwt": s["bwt"], "average": s["average"], "fwt": s.get("fwt"), "R": s["R"],
                    "overlap": s["overlap"], "rule": s["rule"]} for name, s in strategies.items()}
    checks = {}
    if {"copal", "latest", "joint", "accumulated"} <= set(strategies):
        latest_bwt = strategies["latest"]["bwt"]
        checks["copal_bwt_over_latest (<= 0.2)"] = (strategies["copal"]["bwt"] / latest_bwt
                                                    if latest_bwt > 0 else None)
        checks["copal_average_over_joint (<= 1.05)"] = strategies["copal"]["average"] / strategies["joint"]["average"]
        checks["copal_vs_accumulated"] = {"bwt": [strategies["copal"]["bwt"], strategies["accumulated"]["bwt"]],
                                          "average": [strategies["copal"]["average"],
                                                      strategies["accumulated"]["average"]]}
    work = result.get("work") or {}
    once = sum(float(work.get(k) or 0.0) for k in ("statistics_seconds", "prune_seconds", "evaluation_seconds"))
    checks["work"] = {**work, "wall_seconds": wall, "work_once_seconds": once}
    return {"settings": settings, "machine": {**machine_facts(), "torch_threads": torch.get_num_threads()},
            "dense_ppl": result["dense_ppl"], "bwt_note": result.get("bwt_note"), "strategies": table,
            "checks": checks, "seconds": result["seconds"]}


def _adapters(settings: dict, adapters: dict, loaded) -> dict:
    from pruning_core.continual.adapters import ContinualAdaptersSpec, run_continual_adapters

    spec = ContinualAdaptersSpec(model=settings["model"], domains=tuple(settings["domains"]),
                                 method=settings["method"], sparsity=settings["sparsity"], train=adapters["train"],
                                 rank=adapters["rank"], eval_windows=adapters["eval_windows"],
                                 protocol=Protocol(nsamples=settings["nsamples"], seqlen=settings["seqlen"], seed=0,
                                                   eval_windows=settings["eval_windows"]))
    clock = time.perf_counter()
    result = run_continual_adapters(spec, loaded=loaded, store=Store(), progress=_progress)
    modes = {name: {k: mode.get(k) for k in ("R", "bwt", "average", "R_oracle", "bwt_oracle", "average_oracle")
                    if k in mode} for name, mode in result["modes"].items()}
    accuracy = result["selector"].get("accuracy")
    ratio = result.get("forgetting_ratio")
    checks = {"selector_accuracy (>= 0.95)": accuracy,
              "selector_target_met": accuracy is not None and accuracy >= 0.95,
              "forgetting_ratio (<= 0.1)": ratio,
              "forgetting_target_met": ratio is not None and ratio <= 0.1}
    return {"settings": {**adapters, "method": settings["method"], "sparsity": settings["sparsity"]},
            "machine": machine_facts(), "dense_ppl": result["dense_ppl"], "pruned_ppl": result["pruned_ppl"],
            "modes": modes, "selector": result["selector"], "forgetting_ratio": ratio,
            "adapters": {n: {k: a.get(k) for k in ("domain", "parameters", "pruned_weights_zero", "bytes")}
                         for n, a in result["adapters"].items()},
            "bwt_note": result.get("bwt_note"), "checks": checks, "wall_seconds": time.perf_counter() - clock}


if __name__ == "__main__":
    main()

"""Allocation benchmark (issue 13): uniform vs OWL vs sensitivity-guided plans, and the quality-budget frontier.

On the embedded model, pruned propagation, 64 x 512 wiki calibration (seed 0) and 64 wiki evaluation windows:
- the table: perplexity of Wanda and SparseGPT at 50/60/70 % global sparsity (by parameters) for each
  allocator, with the plan's global sparsity, the measured sparsity, and the seconds spent making the plan;
- the budget frontier (+10/25/50 %) per allocator from `allocation.budget.search_budget`, and for one budget a
  dense grid of 2-point steps over the same range, to check the search's answer and count its evaluations
  (dense propagation and 16 windows here: the grid is 20+ evaluations);
- the CPU model and flags of the machine.

Resumable: every finished entry is written to the JSON at once and skipped on the next run, so a long run can be
stopped and continued. Usage: `python benchmarks/allocation.py [--out docs/runs/allocation.json] [--only table]`.
The sensitivity allocator reads second-order (Fisher) sensitivity maps at several sparsities, computed once and
stored (`--sensitivity-metric exact` uses the exact metric instead: ~10 minutes per sparsity on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.first_map import cpu_facts  # noqa: E402
from pruning_core.allocation.allocators import AllocationInputs, get_allocator, make_plan  # noqa: E402
from pruning_core.allocation.budget import BudgetSpec, search_budget  # noqa: E402
from pruning_core.plan import module_sizes  # noqa: E402
from pruning_core.analysis.sensitivity import compute_sensitivity  # noqa: E402
from pruning_core.evaluate import evaluate_setting  # noqa: E402
from pruning_core.store import Store  # noqa: E402
from pruning_core.models.loading import load_model  # noqa: E402
from pruning_core.protocol import Protocol, calibration_ids  # noqa: E402
from pruning_core.prune import PruneConfig, prune_model  # noqa: E402
from pruning_core.statistics_cache import cached_statistics  # noqa: E402


def _save(out: Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out)


def _layer_means(loaded, plan) -> list[float]:
    sizes = module_sizes(loaded)
    return [round(plan.layer_mean(i, sizes[i]), 4) for i in range(plan.layers)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/runs/allocation.json")
    parser.add_argument("--methods", default="wanda,sparsegpt")
    parser.add_argument("--allocations", default="uniform,owl,sensitivity")
    parser.add_argument("--sparsities", default="0.5,0.6,0.7")
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--sensitivity-metric", default="fisher", choices=("fisher", "exact"))
    parser.add_argument("--sensitivity-sparsities", default="0.3,0.5,0.7,0.9")
    parser.add_argument("--budgets", default="0.10,0.25,0.50")
    parser.add_argument("--budget-eval-windows", type=int, default=16)
    parser.add_argument("--only", choices=("table", "budget", "explain"), default=None)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when another run shares the cores)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 2)))

    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report.setdefault("table", {})
    report.setdefault("budget", {})
    report["machine"] = cpu_facts()
    store = Store()  # the user's store: statistics, sensitivity maps and budget points are reused across runs
    loaded = load_model("embedded")
    protocol = Protocol(calib="wiki", nsamples=64, seqlen=512, seed=0, eval_windows=args.eval_windows)
    report["protocol"] = protocol.to_dict()
    report["propagation"] = "pruned"
    calib = calibration_ids(loaded, protocol)

    t = time.perf_counter()
    statistics = cached_statistics(loaded, protocol, "act_sq", store=store, calib_ids=calib)
    report["statistics_seconds"] = round(time.perf_counter() - t, 2)

    sensitivity = None

    def sensitivity_maps():
        nonlocal sensitivity
        if sensitivity is None:
            t0 = time.perf_counter()
            sens_protocol = Protocol(calib="wiki", nsamples=32, seqlen=512, seed=0, eval_windows=8)
            sparsities = [float(s) for s in args.sensitivity_sparsities.split(",")]
            sensitivity = compute_sensitivity(loaded, sens_protocol, "wanda", sparsities,
                                              metrics=(args.sensitivity_metric,), store=store,
                                              dtype="bfloat16", agreement_layers=0)
            report["sensitivity_source"] = {"metric": args.sensitivity_metric, "method": "wanda",
                                            "sparsities": sparsities, "protocol": sens_protocol.to_dict(),
                                            "seconds": round(time.perf_counter() - t0, 1)}
        return sensitivity

    def inputs_for(allocation: str) -> AllocationInputs:
        needs = get_allocator(allocation).needs
        return AllocationInputs(loaded, statistics=statistics if needs != "none" else None,
                                sensitivity=sensitivity_maps() if needs == "sensitivity" else None)

    if args.only in (None, "table"):
        for method in args.methods.split(","):
            for allocation in args.allocations.split(","):
                for target in [float(s) for s in args.sparsities.split(",")]:
                    key = f"{method}/{allocation}/{target:g}"
                    if key in report["table"]:
                        continue
                    t0 = time.perf_counter()
                    plan = make_plan(allocation, inputs_for(allocation), target)
                    plan_seconds = time.perf_counter() - t0
                    config = PruneConfig(method, "unstructured").with_plan(loaded, plan)
                    t0 = time.perf_counter()
                    result = prune_model(loaded, calib, config)
                    prune_seconds = time.perf_counter() - t0
                    evaluation = evaluate_setting(loaded, protocol, ["wiki"], result, store=store)
                    report["table"][key] = {
                        "method": method, "allocation": allocation, "target": target,
                        "plan_global_sparsity": config.sparsity, "measured_sparsity": result.sparsity,
                        "ppl": evaluation.pruned_ppl["wiki"], "dense_ppl": evaluation.dense_ppl["wiki"],
                        "plan_seconds": round(plan_seconds, 2), "prune_seconds": round(prune_seconds, 1),
                        "eval_seconds": round(evaluation.pruned_seconds["wiki"], 1),
                        "calib_dtype": config.calib_dtype, "layer_sparsity": _layer_means(loaded, plan),
                        "plan": plan.to_dict()}
                    print(key, round(evaluation.pruned_ppl["wiki"], 2), flush=True)
                    _save(out, report)

    if args.only in (None, "budget"):
        budget_protocol = Protocol(calib="wiki", nsamples=64, seqlen=512, seed=0,
                                   eval_windows=args.budget_eval_windows)
        for allocation in args.allocations.split(","):
            for budget in [float(b) for b in args.budgets.split(",")]:
                key = f"wanda/{allocation}/+{budget:g}"
                if key in report["budget"]:
                    continue
                spec = BudgetSpec(model="embedded", protocol=budget_protocol, method="wanda", allocation=allocation,
                                  propagation="dense", corpus="wiki", max_increase=budget)
                result = search_budget(loaded, spec, store=store,
                                       sensitivity=sensitivity_maps() if allocation == "sensitivity" else None)
                report["budget"][key] = {k: result[k] for k in ("frontier", "trajectory", "certainty", "dense_ppl",
                                                                 "seconds") if k in result}
                print(key, result["frontier"], flush=True)
                _save(out, report)
        # The check: a dense grid of 2-point steps (uniform, +25 %), same protocol and store (points reused).
        if "grid" not in report["budget"]:
            spec = BudgetSpec(model="embedded", protocol=budget_protocol, method="wanda", allocation="uniform",
                              propagation="dense", corpus="wiki", max_increase=0.25, coarse_step=0.02,
                              resolution=0.02, low=0.2)
            grid = search_budget(loaded, spec, store=None)
            report["budget"]["grid"] = {"frontier": grid["frontier"], "evaluations": grid["certainty"]["evaluations"],
                                        "trajectory": grid["trajectory"]}
            _save(out, report)
    if args.only in (None, "explain"):
        # Why one plan beats another: the sensitivity allocator minimises the cost the maps predict (a sum of
        # per-module costs, each module pruned alone); comparing that prediction with the measured perplexity of
        # every plan shows where the additive model is wrong.
        from pruning_core.plan import SparsityPlan
        from pruning_core.allocation.sensitivity_guided import predicted_cost

        explain = report.setdefault("explain", {})
        for key, entry in sorted(report["table"].items()):
            if entry.get("plan") is None:
                continue
            group = explain.setdefault(f"{entry['method']}/{entry['target']:g}", {})
            cost = predicted_cost(SparsityPlan.from_dict(entry["plan"]), sensitivity_maps())
            group[entry["allocation"]] = {"predicted_cost": cost, "measured_ppl": entry["ppl"],
                                          "predicted_ppl": entry["dense_ppl"] * math.exp(cost),
                                          "dense_ppl": entry["dense_ppl"]}
        report["explain_note"] = ("predicted_cost: the summed per-module increase of the mean token NLL (nats) the "
                                  "sensitivity maps predict for the plan, each module pruned alone; the sensitivity "
                                  "allocator minimises it. predicted_ppl = dense_ppl x exp(predicted_cost).")
        _save(out, report)
        print(json.dumps(explain, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k in ("machine", "statistics_seconds")}, indent=1))


if __name__ == "__main__":
    main()

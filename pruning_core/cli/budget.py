"""`prunescope budget`: the most sparsity a quality budget allows, for each method x allocator asked, headless.

`--executor ray [--ray-address ADDR] [--workers N]` measures each round's points on Ray workers (W workers: W
points a round; same points' numbers and store keys); this process still makes the plans and owns the store.
"""

from __future__ import annotations

import time
from pathlib import Path

from pruning_core.cli.common import (
    ConsoleProgress,
    add_executor_args,
    check_runs_fit_then_free,
    add_protocol_args,
    executor_config_from_args,
    prepare_out_dir,
    protocol_from_args,
    write_json,
)
from pruning_core.errors import ConfigError


def add_budget(sub) -> None:
    p = sub.add_parser("budget", help="the most global sparsity within a perplexity budget (budget.json)")
    add_protocol_args(p)
    p.add_argument("--method", default="wanda", help="magnitude, wanda or sparsegpt; a comma list searches each")
    p.add_argument("--allocation", default="uniform",
                   help="allocator: uniform, owl, sensitivity, ...; a comma list searches each")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--max-increase", default=None,
                        help="allowed perplexity increase over dense: 10%% or 0.10 (= +10 %%)")
    budget.add_argument("--max-ppl", type=float, default=None, help="allowed perplexity (absolute)")
    p.add_argument("--corpus", default=None,
                   help="evaluation corpus of the budget (default: the --calib corpus); several, comma-separated "
                        "(wiki,news): each step must hold on the worst of them")
    p.add_argument("--propagation", default="pruned", choices=["pruned", "dense"],
                   help="pruned: papers' protocol (default); dense: reuse dense statistics (faster)")
    p.add_argument("--coarse-step", default="0.10", help="first, upward steps: 10%% or 0.10")
    p.add_argument("--resolution", default="0.01", help="bisection stops at this gap: 1%% or 0.01")
    p.add_argument("--low", default="0", help="lowest sparsity searched (fraction or %%)")
    p.add_argument("--high", default="0.95", help="highest sparsity searched (fraction or %%)")
    p.add_argument("--sensitivity", default=None,
                   help="sensitivity JSON for --allocation sensitivity (default: maps in the store)")
    add_executor_args(p, "each round's points")
    p.add_argument("--out", required=True, help="output folder (budget.json)")
    p.set_defaults(handler=cmd_budget)


def cmd_budget(args) -> int:
    from pruning_core.allocation.budget import BudgetSpec, parse_fraction
    from pruning_core.jobs.runner import JobRunner

    sensitivity = args.sensitivity
    if sensitivity:
        path = Path(sensitivity).expanduser()
        if not path.is_file():
            raise ConfigError(f"--sensitivity '{sensitivity}' is not a file; give the sensitivity_all.json that "
                              "`prunescope sensitivity` wrote.")
        sensitivity = str(path.resolve())  # the job may run in another folder
    from pruning_core.executors.base import make_executor
    from pruning_core.setting import Setting

    methods = [m.strip().lower() for m in args.method.split(",") if m.strip()]
    allocations = [a.strip().lower() for a in args.allocation.split(",") if a.strip()]
    executor = executor_config_from_args(args)
    corpora = [c.strip() for c in (args.corpus or "").split(",") if c.strip()]
    specs = [BudgetSpec(
        model=args.model, protocol=protocol_from_args(args),
        setting=Setting(method=method, allocation=allocation, propagation=args.propagation),
        corpus=corpora[0] if corpora else None, more_corpora=tuple(corpora[1:]),
        max_increase=None if args.max_increase is None else parse_fraction(args.max_increase, "--max-increase"),
        max_ppl=args.max_ppl, coarse_step=parse_fraction(args.coarse_step, "--coarse-step"),
        resolution=parse_fraction(args.resolution, "--resolution"), low=parse_fraction(args.low, "--low"),
        high=parse_fraction(args.high, "--high"), sensitivity=sensitivity, executor=executor,
    ).validate() for method in methods for allocation in allocations]  # every spec checked before any runs
    if not specs:
        raise ConfigError("Give at least one --method and one --allocation.")
    make_executor(executor)  # a missing Ray fails here, before any search
    start = time.perf_counter()
    runner = JobRunner()
    check_runs_fit_then_free(args, "budget", [spec.to_dict() for spec in specs], runner.store)
    out = prepare_out_dir(args.out)
    results = []
    for spec in specs:
        print(f"== {spec.setting.method} / {spec.setting.allocation}")
        result = runner.run_inline("budget", spec.to_dict(), ConsoleProgress())  # the spec says where to measure
        _print_budget(result)
        results.append(result)
    # One search: budget.json is its result (as before); several: {"searches": [...]} in the order asked.
    write_json(out / "budget.json", results[0] if len(results) == 1 else {"searches": results})
    print(f"wrote {out / 'budget.json'} ({time.perf_counter() - start:.1f} s)")
    return 0


def _print_budget(result: dict) -> None:
    print(f"{'step':>4} {'phase':<7} {'sparsity':>8} {'ppl':>10} {'increase':>9}  verdict")
    for row in result["trajectory"]:
        increase = "" if row["increase"] is None else f"{row['increase'] * 100:+8.2f}%"
        verdict = ("within" if row["passed"] else "over") + (" (stored)" if row["reused"] else "")
        if len(row.get("ppls") or ()) > 1:  # several corpora: the row's figures are its worst corpus's
            verdict += f" (worst: {row['corpus']})"
        print(f"{row['step']:>4} {row['phase']:<7} {row['sparsity']:>8.2f} {row['ppl']:>10.3f} "
              f"{increase:>9}  {verdict}")
    frontier, certainty = result["frontier"], result["certainty"]
    limits = result["budget"].get("limits") or {result["budget"]["corpus"]: result["budget"]["max_ppl"]}
    dense = result.get("dense_ppls") or {result["budget"]["corpus"]: result["dense_ppl"]}
    print("; ".join(f"dense ppl on {c} {dense[c]:.3f} (budget: ppl <= {limits[c]:.3f})" for c in limits)
          + f"; budget {result['budget']['text']}")
    if frontier is None:
        print(f"no sparsity in the searched range is within the budget ({certainty['bounded_by']})")
        return
    gap = "none failed up to the upper bound" if certainty["gap_pp"] is None else \
        f"first failing step {certainty['gap_pp']:g} points higher"
    print(f"frontier: {frontier['sparsity']:.0%} sparsity, ppl on {frontier.get('corpus', '?')} {frontier['ppl']:.3f} "
          f"({frontier['increase'] * 100:+.2f} %); {gap}; {certainty['evaluations']} evaluations "
          f"({certainty['reused']} from the store) on {certainty['eval_windows']} windows")

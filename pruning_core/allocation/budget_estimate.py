"""How long a budget search takes, before the user commits (`budget.search_budget`'s phases, `run_costs` units).

The search stops at the first failing coarse step and bisects below it, so how many steps it measures depends
on the model; the estimate counts the most it can measure (every coarse step up to `high` plus the bisection's
halvings, the same bound the job's progress uses) and says so. Per step: the allocator's plan (allocators that
read statistics score every weight), pruning (a walk per step in "pruned" propagation) and one evaluation on the
budget's corpus. Steps already stored cost nothing but cannot be told apart before the plan is made.
"""

from __future__ import annotations

import math

from pruning_core import run_costs


def search_steps(spec) -> int:
    """The most steps `search_budget` measures for `spec`: coarse steps from `low` to `high` plus the bisection."""
    res = float(spec.resolution)
    low, high = round(float(spec.low) / res), round(float(spec.high) / res)
    coarse = max(1, round(float(spec.coarse_step) / res))
    return max(1, (high - low + coarse - 1) // coarse + max(1, math.ceil(math.log2(coarse))))


def estimate_budget(model_info: dict, spec, speed: run_costs.Speed, windows: int, *,
                    dense_stored: bool = False) -> dict:
    """{"seconds", "peak_memory_bytes", "breakdown", "assumptions"} of `spec` (a `budget.BudgetSpec`), at most.

    windows: whole windows of the budget corpus's evaluation split; dense_stored: its dense perplexity is stored."""
    from pruning_core.allocation.allocators import get_allocator

    facts = run_costs.shape_facts(model_info)
    rates = run_costs.rates(facts, speed)
    protocol = spec.protocol
    used = run_costs.capped_windows({spec.eval_corpus: windows}, protocol.eval_windows)
    steps = search_steps(spec)
    setting = spec.setting
    allocator = get_allocator(setting.allocator_name)
    reads_statistics = allocator.needs not in ("none", "sensitivity")
    breakdown = {"load": run_costs.load_seconds(facts),
                 "dense_evaluation": 0.0 if dense_stored else run_costs.evaluation_seconds(rates, used,
                                                                                           protocol.seqlen),
                 "statistics": (run_costs.walk_seconds(facts, rates, protocol.nsamples, protocol.seqlen,
                                                       protocol.batch_size, allocator.needs)
                                if reads_statistics else 0.0),
                 "plans": steps * facts["prunable"] * run_costs.MASK_SECONDS_PER_WEIGHT if reads_statistics else 0.0,
                 "pruning": steps * run_costs.prune_seconds(facts, rates, setting.method, setting.propagation or
                                                            "pruned", protocol),
                 "evaluation": steps * run_costs.evaluation_seconds(rates, used, protocol.seqlen),
                 "store": steps * run_costs.POINT_FIXED_S}
    peak = run_costs.pruning_peak_bytes(facts, protocol, setting.method, setting.propagation or "pruned")
    if reads_statistics:  # the allocator's dense statistics of every layer, kept for every step's plan
        peak += run_costs.statistics_bytes(facts, allocator.needs, facts["layers"])
    what = (f"at most {steps} steps ({spec.coarse_step:.0%} coarse steps from {spec.low:.0%} to {spec.high:.0%}, "
            f"then halvings to {spec.resolution:.0%}); the search usually stops sooner; each evaluated on "
            f"{spec.eval_corpus} ({used[spec.eval_corpus]} windows)")
    return run_costs.phase_estimate(breakdown, peak, what, rates)

"""An allocation plan for the Setup model as a short job, so that its calibration pass runs in a worker with
progress and cancel instead of inside the dashboard's process.

A plan for one (model, protocol, allocation, global target, sensitivity map) is a pure function of them, so the
job system's cache (a done job with the same spec returns its result) makes every later request instant.
"""

from __future__ import annotations

from pruning_core.allocation.allocators import AllocationInputs, get_allocator, make_plan
from pruning_core.errors import ConfigError
from pruning_core.plan import module_sizes
from pruning_core.progress import ProgressFn, no_progress, sub_progress


def plan_summary(loaded, plan) -> dict:
    """{"plan" (`SparsityPlan.to_dict()`), "global_sparsity" (fraction, by parameters), "layer_sparsity" (each
    decoder layer's, by parameters)} of `plan` on `loaded`."""
    sizes = module_sizes(loaded)
    return {"plan": plan.to_dict(), "global_sparsity": plan.global_sparsity(sizes),
            "layer_sparsity": [plan.layer_mean(i, s) for i, s in enumerate(sizes)]}


def allocation_plan(loaded, protocol, allocation: str, target: float, store=None, sensitivity: dict | None = None,
                    progress: ProgressFn | None = None) -> dict:
    """The plan `allocation` makes for global target sparsity `target` (fraction, by parameters) on `loaded`.

    Statistics an allocator reads come from `store` when a sweep or an earlier plan stored them (else one
    calibration pass, stored for later); `sensitivity` is the sensitivity result a "sensitivity" allocator reads.
    Returns `plan_summary(...)`.
    """
    from pruning_core.statistics_cache import cached_statistics

    progress = progress or no_progress
    needs = get_allocator(allocation).needs
    statistics = None
    if needs == "sensitivity" and sensitivity is None:
        raise ConfigError(f"The '{allocation}' allocation reads a sensitivity map at two or more sparsities; "
                          "compute one on the Sensitivity page first.")
    if needs not in ("none", "sensitivity"):
        statistics = cached_statistics(loaded, protocol, needs, store, progress=sub_progress(progress, 0.0, 0.9))
    plan = make_plan(allocation, AllocationInputs(loaded, statistics=statistics, sensitivity=sensitivity), target)
    progress(1.0, "done")
    return plan_summary(loaded, plan)


def run_plan_job(spec: dict, store, progress: ProgressFn) -> dict:
    """Job entry (`jobs.JOB_KINDS["plan"]`): spec {"model", "protocol" (`Protocol.to_dict()`), "allocation",
    "target", "sensitivity_job" (the id of the sensitivity job whose maps a "sensitivity" allocation reads, or
    None)}. Returns `allocation_plan(...)` plus "sensitivity_job"."""
    from pruning_core.models import load_model
    from pruning_core.protocol import Protocol

    sensitivity = None
    if spec.get("sensitivity_job"):
        job = store.get_job(spec["sensitivity_job"])
        if job is None or job.get("result") is None:
            raise ConfigError("The sensitivity map this plan reads is no longer stored; compute it again on the "
                              "Sensitivity page.")
        sensitivity = job["result"]
    loaded = load_model(spec["model"], progress=sub_progress(progress, 0.0, 0.1))
    result = allocation_plan(loaded, Protocol(**spec["protocol"]), spec["allocation"], float(spec["target"]),
                             store, sensitivity, sub_progress(progress, 0.1, 1.0))
    return {**result, "sensitivity_job": spec.get("sensitivity_job")}

"""THE estimate of any job a page or command can start, before it starts: one function per run kind, one entry.

`estimate_job(kind, spec, loaded, store)` reads what the estimate needs from the machine and the store (this
machine's measured speed, the windows each corpus really holds, the results already stored) and hands it to the
run kind's own estimating function:

| kind        | function                                             |
| ----------- | ---------------------------------------------------- |
| sweep, sensitivity, whatif | `analysis.estimates.estimate_job`     |
| structured  | `structured.estimate.estimate_structured`            |
| continual   | `continual.estimate.estimate_continual`              |
| recovery    | `recovery.estimate.estimate_recovery`                |
| budget      | `allocation.budget_estimate.estimate_budget`         |
| export      | `export.estimate.estimate_export`                    |

Each returns {"seconds", "peak_memory_bytes", "breakdown" {phase: seconds}, "assumptions"} (a map adds
"first_view_seconds"), in the phases of `run_costs`, so one phase costs the same in every run that has it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

#: Job kinds with an estimate (the short jobs, such as "throughput" or "plan", have none).
ESTIMATED_KINDS = ("sweep", "sensitivity", "whatif", "structured", "continual", "recovery", "budget", "export")


def estimate_job(kind: str, spec: dict, loaded, store=None, *, device=None, workers: Optional[int] = None,
                 measure: bool = True, unmeasured: bool = False) -> Optional[dict]:
    """The estimate of job `kind` with `spec` (the job's spec dict) on `loaded`, or None for a kind without one
    or (measure=False) when this machine's speed for the model is not stored yet.

    device / workers: as `analysis.estimates.estimate_job` (sweeps and maps). measure=False: never time the
    model here (the dashboard measures its speed in a short job first); unmeasured=True: with measure=False and
    no stored speed, estimate with the conservative default speed instead of None (the memory is the same)."""
    from pruning_core.analysis import estimates

    if kind in ("sweep", "sensitivity", "whatif"):
        return estimates.estimate_job(kind, spec, loaded, store, device=device, workers=workers, measure=measure,
                                      unmeasured=unmeasured)
    if kind not in ESTIMATED_KINDS:
        return None
    protocol = _protocol_of(kind, spec)
    speed = estimates.measured_speed(loaded, protocol.seqlen, protocol.dtype, store, measure=measure)
    if speed is None and not unmeasured:
        return None
    info = loaded.describe()

    def windows(corpora, protocol_=protocol) -> dict[str, int]:
        every = replace(protocol_, eval_windows=10**9)  # what each split holds; each estimate caps it
        return estimates.evaluation_windows_used(loaded, list(corpora), every, store)

    if kind == "structured":
        from pruning_core.structured.estimate import estimate_structured
        from pruning_core.structured.run import StructuredSpec, _point_key

        run = StructuredSpec.from_dict(spec).validate()
        stored = ([r for r in run.ratios if store.get_result(_point_key(loaded, run, r)) is not None]
                  if store is not None and run.allocation == "uniform" else [])
        made = estimate_structured(info, run, speed, windows(run.corpora), stored_ratios=stored,
                                   dense_stored=_dense_stored(loaded, protocol, run.corpora, store))
        corpora = run.corpora
    elif kind == "continual":
        from pruning_core.continual.estimate import estimate_continual
        from pruning_core.continual.run import ContinualSpec

        run = ContinualSpec.from_dict(spec).validate()
        protocol = run.effective_protocol()
        corpora = list(run.domains)
        made = estimate_continual(info, run, speed, windows(corpora, protocol),
                                  dense_stored=_dense_stored(loaded, protocol, corpora, store))
    elif kind == "recovery":
        from pruning_core.recovery.estimate import estimate_recovery
        from pruning_core.recovery.run import RecoverySpec

        run = RecoverySpec.from_dict(spec).validate()
        corpora = list(run.eval_corpora) or [run.train_corpus]
        made = estimate_recovery(info, run, speed, windows(corpora), measured=_last_recovery(store, run),
                                 dense_stored=_dense_stored(loaded, protocol, corpora, store))
    elif kind == "budget":
        from pruning_core.allocation.budget import BudgetSpec
        from pruning_core.allocation.budget_estimate import estimate_budget

        run = BudgetSpec.from_dict(spec).validate()
        corpora = [run.eval_corpus]
        made = estimate_budget(info, run, speed, windows(corpora)[run.eval_corpus],
                               dense_stored=_dense_stored(loaded, protocol, corpora, store))
    else:  # export
        from pruning_core.export.estimate import estimate_export
        from pruning_core.export.pipeline import ExportOptions

        options = ExportOptions.from_dict(spec["options"])
        corpora = list(options.eval_corpora)
        probe = windows([protocol.calib])[protocol.calib]
        made = estimate_export(info, options, protocol, speed, windows(corpora),
                               dense_stored=_dense_stored(loaded, protocol, corpora, store),
                               probe_windows_available=probe)
    return estimates.with_corpus_memory(made, loaded, protocol, [(c, "evaluation") for c in corpora], store)


#: Job kinds with no time estimate yet whose peak memory `memory_estimate` still gives (so the memory check sees
#: them): GPTQ walks the layers with Hessians and keeps the updated weights, as SparseGPT does; a frontier runs
#: such techniques one after another, never two at once.
MEMORY_ONLY_KINDS = ("quantize", "frontier")


def memory_estimate(kind: str, spec: dict, loaded) -> Optional[dict]:
    """{"seconds": None, "peak_memory_bytes", "assumptions"} of a job of `MEMORY_ONLY_KINDS` (None for another
    kind): the peak of pruning the model once with SparseGPT in pruned propagation (`run_costs.pruning_peak_bytes`:
    the same Hessian walk and one updated copy of the weights as GPTQ); round-to-nearest needs less."""
    from pruning_core import run_costs

    if kind not in MEMORY_ONLY_KINDS:
        return None
    protocol = _protocol_of(kind, spec)
    facts = run_costs.shape_facts(loaded.describe())
    peak = run_costs.pruning_peak_bytes(facts, protocol, "sparsegpt", "pruned")
    return {"seconds": None, "peak_memory_bytes": int(peak), "breakdown": {},
            "assumptions": f"{kind}: peak memory as a GPTQ/SparseGPT walk (the weights, a restore copy, the updated "
                           "weights, one layer's Hessians and the calibration hidden states); time not estimated"}


def peak_memory_estimate(kind: str, spec: dict, loaded, store=None) -> Optional[dict]:
    """The estimate a memory check judges a job by, without timing the model (`estimate_job` with measure=False
    and unmeasured=True, or `memory_estimate` for a kind without a time estimate); None for a kind with neither."""
    return (estimate_job(kind, spec, loaded, store, measure=False, unmeasured=True)
            or memory_estimate(kind, spec, loaded))


def _protocol_of(kind: str, spec: dict):
    from pruning_core.protocol import Protocol

    return Protocol(**(spec.get("protocol") or {}))


def _dense_stored(loaded, protocol, corpora, store) -> bool:
    """Whether `store` holds the dense perplexity of every corpus (`evaluate.dense_key`): then it costs nothing."""
    if store is None:
        return False
    from pruning_core.evaluate import dense_key
    from pruning_core.store import content_hash

    return all(store.get_result(content_hash(dense_key(loaded, protocol, c))) is not None for c in corpora)


def _last_recovery(store, run) -> Optional[dict]:
    """The newest finished recovery of the same model and training dtype: its measured training speed."""
    if store is None:
        return None
    from pruning_core.recovery.estimate import measured_seconds_per_token
    from pruning_core.stored_results import finished_results

    dtype = run.train_config().dtype
    for row in finished_results(store, "recovery", run.model, limit=10):
        result = row["result"]
        if ((result.get("spec") or {}).get("train") or {}).get("dtype", "bfloat16") == dtype \
                and measured_seconds_per_token(result):
            return result
    return None

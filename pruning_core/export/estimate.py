"""How long an export takes, before the user commits (`pipeline.run_export`'s phases, `run_costs` units).

Counted: the model load; the plan (allocators reading statistics); pruning (none for a stored What-if mask);
the dense (unless stored) and pruned perplexities; each extra curve point (prune + evaluate); the report's
heatmap (second-order map with its agreement rows, `analysis.estimates.estimate_sensitivity`); the sample
generations of the dense and pruned model; writing the files (the masks, and the model when asked).
lm-eval tasks are not counted (their length depends on the tasks' documents): the assumptions say so.
"""

from __future__ import annotations

from typing import Mapping

from pruning_core import run_costs


def estimate_export(model_info: dict, options, protocol, speed: run_costs.Speed, windows: Mapping[str, int], *,
                    dense_stored: bool = False, probe_windows_available: int | None = None) -> dict:
    """{"seconds", "peak_memory_bytes", "breakdown", "assumptions"} of an export with `options`
    (`pipeline.ExportOptions`) and `protocol`. windows: {corpus: whole windows of its evaluation split}."""
    from pruning_core.allocation.allocators import get_allocator
    from pruning_core.analysis.estimates import estimate_sensitivity
    from pruning_core.export.pipeline import AGREEMENT_ROWS, PROBE_WINDOWS  # noqa: F401 - the heatmap's settings

    facts = run_costs.shape_facts(model_info)
    rates = run_costs.rates(facts, speed)
    used = run_costs.capped_windows({c: windows.get(c, protocol.eval_windows) for c in options.eval_corpora},
                                    protocol.eval_windows)
    evaluation = run_costs.evaluation_seconds(rates, used, protocol.seqlen)
    allocator = get_allocator(options.allocator or "uniform")
    plan_reads = options.plan is None and allocator.needs not in ("none", "sensitivity")
    curve = [s for s in options.curve_sparsities if abs(float(s) - float(options.sparsity)) > 1e-9]
    breakdown = {"load": run_costs.load_seconds(facts),
                 "plan": (run_costs.walk_seconds(facts, rates, protocol.nsamples, protocol.seqlen, protocol.batch_size,
                                                 allocator.needs) + facts["prunable"] * run_costs.MASK_SECONDS_PER_WEIGHT
                          if plan_reads else 0.0),
                 "pruning": 0.0 if options.mask_artifact else run_costs.prune_seconds(
                     facts, rates, options.method, options.propagation, protocol),
                 "evaluation": evaluation + (0.0 if dense_stored else evaluation),
                 "curve_points": len(curve) * (run_costs.prune_seconds(facts, rates, options.method,
                                                                       options.propagation, protocol) + evaluation),
                 "heatmap": 0.0, "samples": 0.0, "writing": 0.0}
    peak = run_costs.pruning_peak_bytes(facts, protocol, options.method, options.propagation)
    if options.heatmap:
        made = estimate_sensitivity(model_info, protocol, options.method, [float(options.sparsity)], ["fisher"],
                                    PROBE_WINDOWS, speed, probe_windows_available=probe_windows_available,
                                    include_load=False)
        breakdown["heatmap"] = made["seconds"]
        peak = max(peak, made["peak_memory_bytes"])
    breakdown["samples"] = run_costs.generation_seconds(facts, rates, len(options.prompts), int(options.max_new_tokens))
    written = facts["prunable"] / 8 + (facts["memory"] if options.save_model else 0)  # bit-packed masks (+ model)
    breakdown["writing"] = run_costs.save_seconds(written)
    what = (f"one {options.method} {options.structure} setting"
            + (" from the stored What-if mask" if options.mask_artifact else "")
            + (f" + {len(curve)} curve points" if curve else "")
            + f", evaluated on {', '.join(f'{c} {w} windows' for c, w in used.items())}"
            + ("; heatmap (second-order map)" if options.heatmap else "")
            + (f"; {len(options.prompts)} prompts x {options.max_new_tokens} tokens of samples"
               if options.prompts else "")
            + ("; the pruned model saved" if options.save_model else "")
            + (f"; lm-eval ({', '.join(options.lm_eval_tasks)}) not counted" if options.lm_eval_tasks else ""))
    return run_costs.phase_estimate(breakdown, peak, what, rates)

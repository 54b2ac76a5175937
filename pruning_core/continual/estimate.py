"""How long a continual run takes, before the user commits (`run.run_continual`'s phases, `run_costs` units).

Counted: the model load; the dense perplexities of every domain (unless stored); each domain's calibration
statistics once; per strategy and step the masks (a static strategy, joint, prunes once) and the evaluation of
the step's model on every domain.
"""

from __future__ import annotations

from typing import Mapping

from pruning_core import run_costs


def estimate_continual(model_info: dict, spec, speed: run_costs.Speed, windows: Mapping[str, int], *,
                       dense_stored: bool = False, stored_steps: int = 0) -> dict:
    """{"seconds", "peak_memory_bytes", "breakdown", "assumptions"} of `spec` (a `run.ContinualSpec`).

    windows: {domain: whole windows its evaluation split holds}; dense_stored: the dense perplexities are stored;
    stored_steps: steps the store already holds (each saves its mask and its evaluation)."""
    from pruning_core.continual.strategies import get_strategy
    from pruning_core.methods import get_method

    facts = run_costs.shape_facts(model_info)
    rates = run_costs.rates(facts, speed)
    protocol = spec.effective_protocol()
    domains = list(spec.domains)
    used = run_costs.capped_windows({d: windows.get(d, protocol.eval_windows) for d in domains},
                                    protocol.eval_windows)
    method = spec.setting.method
    steps = 0
    for name in spec.strategies:
        steps += 1 if get_strategy(name, get_method(method)).static else len(domains)
    todo = max(steps - int(stored_steps), 0)
    per_step = run_costs.mask_seconds(facts, rates, method)
    breakdown = {"load": run_costs.load_seconds(facts),
                 "dense_evaluation": 0.0 if dense_stored else run_costs.evaluation_seconds(rates, used,
                                                                                           protocol.seqlen),
                 "statistics": (len(domains) * run_costs.walk_seconds(facts, rates, protocol.nsamples, protocol.seqlen,
                                                                     protocol.batch_size, get_method(method).needs)
                                if todo else 0.0),
                 "pruning": todo * per_step,
                 "evaluation": todo * run_costs.evaluation_seconds(rates, used, protocol.seqlen),
                 "store": todo * run_costs.POINT_FIXED_S}
    # Dense propagation (the spec's setting): every layer's statistics of a domain live while its steps prune.
    peak = run_costs.pruning_peak_bytes(facts, protocol, method, "dense")
    what = (f"{len(spec.strategies)} strategies x {len(domains)} domains = {steps} pruned steps"
            + (f" ({steps - todo} already in the store: they cost nothing)" if stored_steps else "")
            + f", each evaluated on {', '.join(f'{d} {w} windows' for d, w in used.items())}")
    return run_costs.phase_estimate(breakdown, peak, what, rates)

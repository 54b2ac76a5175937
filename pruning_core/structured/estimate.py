"""How long a structured run takes, before the user commits (`run.run_structured`'s phases, `run_costs` units).

Counted: the model load; the dense perplexities (unless stored); the unit statistics walk (when the score or
compensation reads data), with its disk time when the statistics are spilled (`statistics.SpilledLayers`: written
once, read back twice per ratio); per ratio not yet in the store: pruning (scores per unit, the OBS score's
inverses, the compensation's cross-validated refits), the evaluation, the sizes (16-bit files written and
measured), the dense-against-pruned speed timing (when asked) and the sample text.
"""

from __future__ import annotations

from typing import Collection, Mapping

from pruning_core import run_costs


def consumer_statistics_bytes(facts: dict) -> int:
    """Every layer's unit statistics (`statistics.ConsumerStatistics`), bytes: per layer, the attention output's and
    the MLP down projection's input Gram matrices (fp32, width x width) and sums (fp64), one per fold."""
    return int(facts["layers"] * layer_statistics_bytes(facts))


def layer_statistics_bytes(facts: dict) -> int:
    """One layer's unit statistics, bytes (`statistics.statistics_bytes` of its two consumers)."""
    from pruning_core.structured.statistics import statistics_bytes

    return statistics_bytes({"o": facts["hidden"], "mlp": max(facts["input_widths"])})


def statistics_spilled(facts: dict) -> bool:
    """Whether `statistics.collect_unit_statistics` keeps this model's statistics on disk (above
    `statistics.SPILL_ABOVE_BYTES` for the whole model)."""
    from pruning_core.structured.statistics import SPILL_ABOVE_BYTES

    return consumer_statistics_bytes(facts) > SPILL_ABOVE_BYTES


def held_statistics_bytes(facts: dict) -> int:
    """The unit statistics alive at once, bytes: every layer's when they stay in memory, else (spilled to disk)
    the layer being collected or read back and one being written."""
    return 2 * layer_statistics_bytes(facts) if statistics_spilled(facts) else consumer_statistics_bytes(facts)


#: fp64-equivalent (8-byte) values per squared consumer width alive while one consumer is refit
#: (`compensate.refit`): the folds' fp64 moments and fp32 augmented moments, the kept blocks and their Cholesky
#: factors, the identity and the damped system.
REFIT_WORKSPACE_VALUES_PER_WIDTH_SQUARED = 6


def refit_workspace_bytes(facts: dict) -> int:
    """The compensation's working set for the widest consumer (the MLP down projection), bytes."""
    width = max(facts["input_widths"])
    return int(REFIT_WORKSPACE_VALUES_PER_WIDTH_SQUARED * 8 * width * width)


#: Share of the measured fp32 matrix-product rate (`rates()["fp32_matmul_flops"]`, 2048-square products) that
#: the compensation reaches, against the counts below: 0.87 (Llama-3.2-3B shape, 102 s per layer), 0.93
#: (TinyLlama-1.1B) and 0.92 (SmolLM2-360M) on a 2-core AMD EPYC.
MATMUL_RATE_SHARE = 0.9
#: Without that measurement, the share of `rates()["fp32_flops"]` (a third of the model's bf16 forward rate): 0.74,
#: 0.79 and 0.95 at the same shapes (a small model's forward runs small, slower matmuls), the middle of that range.
FP32_RATE_SHARE = 0.85
#: Cholesky factorisations and triangular solves against matrix products of the same flops (152 against 210
#: GFLOP/s in fp32 at 6,554 x 6,554, 2-core AMD EPYC).
FACTORISATION_RATE_SHARE = 0.7
#: fp64 against fp32 (AVX-512 holds half as many; 116 against 210 GFLOP/s for matrix products).
FP64_RATE_SHARE = 0.5


def consumer_widths(facts: dict) -> tuple[tuple[int, int], ...]:
    """(input width, output rows) of each layer's two consumers: the attention output (hidden x hidden) and the MLP
    down projection (hidden x the widest input)."""
    return (facts["hidden"], facts["hidden"]), (max(facts["input_widths"]), facts["hidden"])


def compensation_flops(facts: dict, ratio: float) -> float:
    """Floating-point operations of the OBS compensation at `ratio` (`compensate.cross_validated_alpha`, then the
    final refit) over every layer, weighted to fp32 matrix-product flops (a factorisation's flop counts
    1 / FACTORISATION_RATE_SHARE, an fp64 one 1 / FP64_RATE_SHARE). Per consumer of width w, `out` rows and kept
    width k = (1 - ratio) w (each kind loses about `ratio` of its own parameters, `prune_structured.removal_counts`):

    - per fold, the alpha-independent product W Sigma (2 out w^2);
    - per finite alpha and fold, a Cholesky factorisation (k^3 / 3), its solve (2 out k^2) and the held-out error's
      product (2 out k^2);
    - the fp64 refit: W Sigma[:, K] (2 out w k), a factorisation and a solve.

    Counted with the full width w for k, and fp64 at the fp32 rate, the estimate of Llama-3.2-3B's compensation was
    0.73 of the measured 98 s per layer (more at smaller widths), and the score's inverse was counted as SparseGPT's."""
    from pruning_core.structured.compensate import ALPHA_GRID
    from pruning_core.structured.statistics import FOLDS

    finite = sum(1 for alpha in ALPHA_GRID if alpha != float("inf"))
    total = 0.0
    for w, out in consumer_widths(facts):
        k = max(1.0 - float(ratio), 0.0) * w
        factorise = k ** 3 / 3 + 2 * out * k * k
        total += FOLDS * 2 * out * w * w + FOLDS * finite * (factorise / FACTORISATION_RATE_SHARE + 2 * out * k * k)
        total += (2 * out * w * k + factorise / FACTORISATION_RATE_SHARE) / FP64_RATE_SHARE
    return facts["layers"] * total


def score_flops(facts: dict) -> float:
    """The OBS score's inverse of each consumer's damped moments (`scores.unit_scores`: an fp64 Cholesky
    factorisation, w^3 / 3, and `cholesky_inverse`, 2 w^3 / 3), weighted like `compensation_flops`, every layer.
    Llama-3.2-3B's shape: 10 s per layer measured."""
    per_layer = sum(w ** 3 for w, _ in consumer_widths(facts))
    return facts["layers"] * per_layer / FACTORISATION_RATE_SHARE / FP64_RATE_SHARE


def statistics_gram_flops(facts: dict, tokens: int) -> float:
    """The unit statistics' Gram matrices over `tokens` calibration tokens, every layer: the upper block triangle
    (`stats.add_upper_gram`, blocks of `GRAM_BLOCK` columns) of X^T X for the two consumers' inputs only, where
    `run_costs.hessian_seconds` counts a full X^T X for every linear input (2.5x too much at Llama-3.2-3B's
    widths: the statistics walk was estimated at 35.6 s per layer and took 26.7 s)."""
    from pruning_core.stats import GRAM_BLOCK

    per_token = sum(min(w * (w + GRAM_BLOCK), 2 * w * w) for w, _ in consumer_widths(facts))
    return facts["layers"] * int(tokens) * per_token


def estimate_structured(model_info: dict, spec, speed: run_costs.Speed, windows: Mapping[str, int], *,
                        stored_ratios: Collection[float] = (), dense_stored: bool = False) -> dict:
    """{"seconds", "peak_memory_bytes", "breakdown", "assumptions"} of `spec` (a `run.StructuredSpec`).

    speed: this machine's measured speed (`analysis.estimates.measured_speed`); windows: {corpus: whole windows
    its evaluation split holds}; stored_ratios: ratios whose point the store holds (free); dense_stored: the
    dense perplexities are stored."""
    facts = run_costs.shape_facts(model_info)
    rates = run_costs.rates(facts, speed)
    product_rate = (rates["fp32_matmul_flops"] * MATMUL_RATE_SHARE if rates["fp32_matmul_flops"]
                    else rates["fp32_flops"] * FP32_RATE_SHARE)
    protocol = spec.protocol
    used = run_costs.capped_windows({c: windows.get(c, protocol.eval_windows) for c in spec.corpora},
                                    protocol.eval_windows)
    todo = [r for r in spec.ratios if float(r) not in {float(s) for s in stored_ratios}]
    kept_share = 1.0 - min((float(r) for r in spec.ratios), default=0.0)  # of the weights, in the smaller copy
    breakdown = {"load": run_costs.load_seconds(facts),
                 "dense_evaluation": 0.0 if dense_stored else run_costs.evaluation_seconds(rates, used,
                                                                                           protocol.seqlen),
                 "statistics": 0.0, "statistics_disk": 0.0, "pruning": 0.0, "evaluation": 0.0,
                 "sizes": 0.0, "speed_timing": 0.0, "samples": 0.0}
    needs_data = spec.score != "magnitude" or spec.compensate or "layers" in spec.units
    spilled = statistics_spilled(facts)  # on disk, read back one layer at a time
    if todo and needs_data:
        # The forwards and the hooks' per-value cost (counted for every linear input: the two consumers' and the
        # block influence's layer input and output), then the consumers' Gram matrices.
        breakdown["statistics"] = (run_costs.walk_seconds(facts, rates, protocol.nsamples, protocol.seqlen,
                                                          protocol.batch_size, "act_sq")
                                   + statistics_gram_flops(facts, protocol.nsamples * protocol.seqlen) / product_rate)
        if spilled:  # written once
            breakdown["statistics_disk"] = run_costs.save_seconds(consumer_statistics_bytes(facts))
    # Choosing the units: a comparison per weight, plus the OBS score's inverses.
    per_score = run_costs.mask_seconds(facts, rates, "wanda")
    if spec.score == "obs":
        per_score += score_flops(facts) / product_rate
    for i, ratio in enumerate(todo):
        breakdown["pruning"] += per_score
        if spec.compensate:
            breakdown["pruning"] += compensation_flops(facts, ratio) / product_rate
        if spilled and needs_data:  # read back for the scores and again for the compensation
            breakdown["statistics_disk"] += 2 * consumer_statistics_bytes(facts) / run_costs.LOAD_BYTES_PER_S
        # THE sizes: the smaller copy, and the first time the dense model (then stored), written as 16-bit
        # safetensors (2 bytes a parameter).
        breakdown["sizes"] += run_costs.save_seconds(2 * facts["params"] * (kept_share + (i == 0)))
        breakdown["evaluation"] += run_costs.evaluation_seconds(rates, used, protocol.seqlen)
        if spec.speed:
            breakdown["speed_timing"] += run_costs.speed_timing_seconds(facts, rates, dict(spec.speed_settings))
        breakdown["samples"] += run_costs.generation_seconds(facts, rates, 1, int(spec.max_new_tokens))
    # Two phases that do not overlap, each beside the dense model: the statistics walk (held statistics and the
    # walk's hidden states and in-layer activations), and the pruning of one ratio (the smaller copy, built one
    # layer at a time beside one dense layer's copy, held statistics and one consumer's refit workspace), whose
    # copy then stays through the evaluation. Measured before the copy and the statistics were bounded: 2.55 GB
    # on the embedded model at 64 x 512, 13.0 GB on TinyLlama-1.1B's shapes (both copies and all statistics).
    held = held_statistics_bytes(facts)
    walk = held + run_costs.walk_working_bytes(facts, protocol.nsamples, protocol.seqlen, protocol.batch_size,
                                               "act_sq")  # the hidden-state buffers (its act_sq is a few KB)
    layer_bytes = facts["memory"] * facts["prunable"] / max(facts["params"], 1) / max(facts["layers"], 1)
    prune = (kept_share * facts["memory"] + layer_bytes + held
             + (refit_workspace_bytes(facts) if spec.compensate else 0))
    peak = run_costs.resident_bytes(run_costs.RUNTIME_BYTES + facts["memory"] + max(walk, prune), facts,
                                    run_costs.WALK_HEAP_OVERHEAD_BF16_WEIGHTS)
    what = (f"{len(spec.ratios)} ratios ({len(spec.ratios) - len(todo)} already in the store: they cost nothing)"
            f", evaluated on {', '.join(f'{c} {w} windows' for c, w in used.items())}"
            + ("; dense-against-pruned speed timing per ratio" if spec.speed else "")
            + (f"; {spec.max_new_tokens} sample tokens per model" if int(spec.max_new_tokens) else "")
            + "; memory: the dense model, the smaller copy and the unit statistics (one layer's at a time when they "
               "go to disk)")
    return run_costs.phase_estimate(breakdown, peak, what, rates)

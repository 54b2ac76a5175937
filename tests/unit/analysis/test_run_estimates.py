"""One estimating function per run kind: each counts every phase of its run, results already stored cost nothing.

The functions take the machine's speed as an argument, so these tests inject it (no timing, no wall clock)."""

from __future__ import annotations

import pytest

from pruning_core import run_costs
from pruning_core.analysis.estimates import estimate_sensitivity, estimate_sweep
from pruning_core.analysis.sweep import SweepSpec
from pruning_core.protocol import Protocol

PROTOCOL = Protocol(calib="news", nsamples=8, seqlen=64, eval_windows=4, batch_size=4)
SPEED = {"tokens_per_s": 2000.0, "call_seconds": 0.01}
# The tiny test model's `describe()` (tiny-llama), written out: no model is loaded here.
INFO = {"layers": 2, "hidden_size": 64, "module_kinds": ["q", "k", "v", "o", "gate", "up", "down"],
        "parameters": 93248, "prunable_parameters": 73728, "memory_bytes": 372992}
WINDOWS = {"news": 40, "wiki": 30, "pydocs": 20}


def _phases(made: dict) -> dict:
    assert made["seconds"] == pytest.approx(sum(made["breakdown"].values()))
    assert made["peak_memory_bytes"] > 0 and made["assumptions"]
    return made["breakdown"]


def test_a_fully_stored_sweep_costs_only_its_load():
    spec = SweepSpec(model="tiny-llama", methods=("wanda", "sparsegpt"), sparsities=(0.3, 0.5, 0.7),
                     eval_corpora=("news",), protocol=PROTOCOL, propagation="dense")
    fresh = _phases(estimate_sweep(INFO, spec, SPEED))
    every = range(len(spec.grid()))
    stored = estimate_sweep(INFO, spec, SPEED, stored_points=every, dense_stored=True, stored_statistics="none")
    phases = _phases(stored)
    assert stored["seconds"] == pytest.approx(phases["load"])  # no walk, no point, no dense evaluation
    assert fresh["pruning"] > 0 and fresh["evaluation"] > 0 and fresh["statistics"] > 0
    assert "6 already in the store" in stored["assumptions"]
    half = estimate_sweep(INFO, spec, SPEED, stored_points=[0, 1, 2], dense_stored=True)
    assert phases["load"] < half["seconds"] < sum(fresh.values())


def test_sweep_points_cost_by_method_and_propagation():
    def per_point(method: str, propagation: str) -> float:
        spec = SweepSpec(model="tiny-llama", methods=(method,), sparsities=(0.3, 0.4, 0.5, 0.6),
                         eval_corpora=("news",), protocol=PROTOCOL, propagation=propagation)
        return estimate_sweep(INFO, spec, SPEED)["breakdown"]["pruning"]

    # Pruned propagation walks the model per point; dense Wanda ranks once and re-thresholds.
    assert per_point("wanda", "pruned") > per_point("wanda", "dense")
    assert per_point("sparsegpt", "pruned") > per_point("wanda", "pruned")
    # Magnitude needs no data: both propagations prune the same way.
    assert per_point("magnitude", "pruned") == pytest.approx(per_point("magnitude", "dense"))


def test_the_call_cost_counts_per_forward_call():
    without = estimate_sweep(INFO, SweepSpec(model="tiny-llama", methods=("wanda",), sparsities=(0.5,),
                                             eval_corpora=("news",), protocol=PROTOCOL), SPEED["tokens_per_s"])
    with_calls = estimate_sweep(INFO, SweepSpec(model="tiny-llama", methods=("wanda",), sparsities=(0.5,),
                                                eval_corpora=("news",), protocol=PROTOCOL), SPEED)
    # 4 windows in batches of 4: one evaluation call per point.
    assert with_calls["breakdown"]["evaluation"] - without["breakdown"]["evaluation"] == pytest.approx(0.01)


def test_the_map_estimate_names_its_first_view():
    made = estimate_sensitivity(INFO, PROTOCOL, "wanda", [0.5], ["auto"], 4, SPEED)
    phases = _phases(made)
    assert 0 < made["first_view_seconds"] < made["seconds"]
    assert made["first_view_seconds"] == pytest.approx(sum(phases[k] for k in ("load", "dense_probe", "statistics",
                                                                               "fisher", "masks")))
    assert "exact_probes" in phases and phases["exact_probes"] > 0
    assert "first_view_seconds" not in estimate_sensitivity(INFO, PROTOCOL, "wanda", [0.5], ["exact"], 4, SPEED)


def test_the_first_view_walks_its_own_windows_and_the_exact_map_walks_all_of_them():
    from dataclasses import replace

    from pruning_core.analysis.refinement import FIRST_VIEW_NSAMPLES

    many = replace(PROTOCOL, nsamples=2 * FIRST_VIEW_NSAMPLES)
    made = _phases(estimate_sensitivity(INFO, many, "wanda", [0.5], ["auto"], 4, SPEED))
    few = _phases(estimate_sensitivity(INFO, replace(PROTOCOL, nsamples=FIRST_VIEW_NSAMPLES), "wanda", [0.5],
                                       ["auto"], 4, SPEED))
    assert made["statistics"] == pytest.approx(few["statistics"])  # the first view: its 32 windows only
    assert made["exact_statistics"] > made["statistics"]  # the exact map: a second walk over all 64
    assert "exact_statistics" not in few


def test_a_dense_sweep_counts_the_score_ranks_it_keeps_between_points():
    """A dense-propagation sweep ranks each matrix once and re-thresholds the ranks at later points: the ranks stay
    for the whole sweep (int16 per weight for Wanda). SmolLM2-360M's five-point sweep peaked at 3.61 GB against
    1.77 GB estimated without them."""
    one, five = (estimate_sweep(INFO, SweepSpec(model="tiny-llama", methods=("wanda",), sparsities=sparsities,
                                                 eval_corpora=("news",), protocol=PROTOCOL, propagation="dense"),
                                SPEED)["peak_memory_bytes"] for sparsities in ((0.5,), (0.3, 0.4, 0.5, 0.6, 0.7)))
    assert five - one == 2 * INFO["prunable_parameters"]


def test_structured_counts_statistics_pruning_evaluation_speed_and_samples():
    from pruning_core.structured.estimate import estimate_structured
    from pruning_core.structured.run import StructuredSpec

    spec = StructuredSpec(model="tiny-llama", protocol=PROTOCOL, ratios=(0.1, 0.2), speed=True,
                          speed_settings={"prefill_tokens": 64, "repeats": 2}, max_new_tokens=8)
    phases = _phases(estimate_structured(INFO, spec, SPEED, WINDOWS))
    for phase in ("load", "dense_evaluation", "statistics", "pruning", "evaluation", "speed_timing", "samples"):
        assert phases[phase] > 0, phase
    no_speed = _phases(estimate_structured(INFO, StructuredSpec(model="tiny-llama", protocol=PROTOCOL,
                                                                ratios=(0.1, 0.2), max_new_tokens=8), SPEED, WINDOWS))
    assert no_speed["speed_timing"] == 0 and no_speed["pruning"] == pytest.approx(phases["pruning"])
    stored = _phases(estimate_structured(INFO, spec, SPEED, WINDOWS, stored_ratios=(0.1, 0.2), dense_stored=True))
    assert sum(stored.values()) == pytest.approx(stored["load"])


def test_structured_time_counts_the_cross_validated_compensation_and_the_obs_inverses():
    """SmolLM2-360M's OBS compensation (every finite alpha on both folds, then the fp64 refit) took 98 s of a
    245 s run estimated at 166 s without it; Llama-3.2-3B's took 98 s per layer, 0.73 of a count with the full width
    as the kept one and fp64 at the fp32 rate."""
    from pruning_core.structured.estimate import (
        FP32_RATE_SHARE,
        compensation_flops,
        estimate_structured,
        score_flops,
    )
    from pruning_core.structured.run import StructuredSpec

    def pruning(compensate: bool, score: str, ratios=(0.2,)) -> float:
        spec = StructuredSpec(model="tiny-llama", protocol=PROTOCOL, ratios=ratios, compensate=compensate,
                              score=score)
        return estimate_structured(INFO, spec, SPEED, WINDOWS)["breakdown"]["pruning"]

    facts = run_costs.shape_facts(INFO)
    rate = run_costs.rates(facts, SPEED)["fp32_flops"] * FP32_RATE_SHARE
    assert pruning(True, "obs") - pruning(False, "magnitude") == pytest.approx(
        (compensation_flops(facts, 0.2) + score_flops(facts)) / rate)
    # Removing more leaves smaller systems to solve: each ratio's compensation counts its own kept width.
    assert compensation_flops(facts, 0.4) < compensation_flops(facts, 0.2)
    assert pruning(True, "obs", (0.2, 0.4)) == pytest.approx(
        2 * pruning(False, "obs") + (compensation_flops(facts, 0.2) + compensation_flops(facts, 0.4)) / rate)


def test_structured_statistics_walk_counts_the_two_consumers_upper_grams():
    """The unit statistics hold Gram matrices of two consumer inputs (the upper block triangle), not a Hessian per
    linear input: Llama-3.2-3B's walk was estimated at 35.6 s per layer against 26.7 s measured."""
    from pruning_core.stats import GRAM_BLOCK
    from pruning_core.structured.estimate import statistics_gram_flops

    facts = run_costs.shape_facts(LLAMA_3B)
    tokens = 64 * 512
    gram = statistics_gram_flops(facts, tokens)
    assert gram == 28 * tokens * (3072 * (3072 + GRAM_BLOCK) + 8192 * (8192 + GRAM_BLOCK))
    assert gram < 0.5 * run_costs.hessian_seconds(facts, {"fp32_flops": 1.0}, tokens)


def test_structured_memory_counts_both_folds_unit_statistics_and_the_walks_hidden_states():
    """The embedded model's structured run peaked at 2.55 GB against 1.82 GB estimated when every layer's consumer
    statistics (two folds of two Gram matrices) were counted as one Hessian per input and the walk as nothing."""
    from pruning_core.structured.estimate import (
        consumer_statistics_bytes,
        estimate_structured,
        held_statistics_bytes,
    )
    from pruning_core.structured.run import StructuredSpec

    facts = run_costs.shape_facts(INFO)
    widths = (64, max(facts["input_widths"]))
    assert consumer_statistics_bytes(facts) == int(2 * 2 * sum(4 * w * w + 8 * w for w in widths))  # 2 layers, 2 folds
    assert held_statistics_bytes(facts) == consumer_statistics_bytes(facts)  # small: kept in memory
    few, more = (estimate_structured(INFO, StructuredSpec(model="tiny-llama", protocol=Protocol(
        calib="news", nsamples=n, seqlen=64, eval_windows=4, batch_size=4), ratios=(0.2,)), SPEED, WINDOWS)
        for n in (8, 16))
    # Eight more windows: two fp32 buffers of their hidden states (entering and leaving a layer).
    assert more["peak_memory_bytes"] - few["peak_memory_bytes"] == 2 * 8 * 64 * 64 * 4
    assert few["peak_memory_bytes"] > run_costs.RUNTIME_BYTES + INFO["memory_bytes"] + consumer_statistics_bytes(
        facts)


# Llama-3.2-3B's `describe()` in bf16, written out (its statistics: 17 GB over 28 layers).
LLAMA_3B = {"layers": 28, "hidden_size": 3072, "module_kinds": ["q", "k", "v", "o", "gate", "up", "down"],
            "parameters": 3_212_749_824, "prunable_parameters": 2_818_572_288, "memory_bytes": 6_425_499_648,
            "vocab_size": 128_256, "widest_input": 8192}


def test_structured_memory_of_a_3b_model_holds_one_layers_statistics_and_a_smaller_copy():
    """Spilled statistics and a copy built layer by layer: Llama-3.2-3B's run fits beside its 6.4 GB of bf16 weights
    in 24 GB, where the dense model, a full copy and every layer's 17 GB of statistics would not."""
    from pruning_core.structured.estimate import consumer_statistics_bytes, estimate_structured, held_statistics_bytes
    from pruning_core.structured.run import StructuredSpec
    from pruning_core.structured.statistics import SPILL_ABOVE_BYTES

    facts = run_costs.shape_facts(LLAMA_3B)
    every = consumer_statistics_bytes(facts)
    assert every > 16e9 and every > SPILL_ABOVE_BYTES
    assert held_statistics_bytes(facts) == 2 * every // 28
    spec = StructuredSpec(model="random:llama-3.2-3b@bfloat16", protocol=Protocol(
        calib="news", nsamples=64, seqlen=512, eval_windows=8, batch_size=8), ratios=(0.2,))
    peak = estimate_structured(LLAMA_3B, spec, SPEED, WINDOWS)["peak_memory_bytes"]
    assert LLAMA_3B["memory_bytes"] * 1.8 < peak < 20e9
    assert peak < run_costs.RUNTIME_BYTES + 2 * LLAMA_3B["memory_bytes"] + every
    # Spilled statistics cost disk time (written once, read back twice per ratio); kept in memory, none.
    phases = _phases(estimate_structured(LLAMA_3B, spec, SPEED, WINDOWS))
    assert phases["statistics_disk"] == pytest.approx(run_costs.save_seconds(every)
                                                      + 2 * every / run_costs.LOAD_BYTES_PER_S)
    assert phases["sizes"] == pytest.approx(run_costs.save_seconds(2 * LLAMA_3B["parameters"] * 1.8))
    small = _phases(estimate_structured(INFO, StructuredSpec(model="tiny-llama", protocol=PROTOCOL, ratios=(0.2, 0.4)),
                                        SPEED, WINDOWS))
    assert small["statistics_disk"] == 0.0
    assert small["sizes"] == pytest.approx(run_costs.save_seconds(2 * INFO["parameters"] * (0.8 + 1 + 0.8)))


def test_continual_counts_each_domain_statistics_and_every_step_on_every_domain():
    from pruning_core.continual.estimate import estimate_continual
    from pruning_core.continual.run import ContinualSpec
    from pruning_core.setting import Setting

    def made(domains, strategies):
        spec = ContinualSpec(model="tiny-llama", protocol=PROTOCOL, domains=domains, strategies=strategies,
                             setting=Setting(method="wanda", sparsity=0.5, propagation="dense", allocation="uniform"))
        return estimate_continual(INFO, spec, SPEED, WINDOWS)

    two = _phases(made(("news", "wiki"), ("sequential",)))
    three = _phases(made(("news", "wiki", "pydocs"), ("sequential",)))
    assert three["statistics"] == pytest.approx(1.5 * two["statistics"])  # one walk per domain
    assert three["pruning"] == pytest.approx(1.5 * two["pruning"])  # one step per domain
    assert three["evaluation"] > 1.5 * two["evaluation"]  # every step evaluated on every domain so far given
    joint = _phases(made(("news", "wiki", "pydocs"), ("joint",)))
    assert joint["pruning"] == pytest.approx(three["pruning"] / 3)  # a static strategy prunes once


def test_recovery_counts_every_phase_not_only_training():
    from pruning_core.recovery.estimate import estimate_recovery
    from pruning_core.recovery.run import RecoverySpec

    spec = RecoverySpec(model="tiny-llama", protocol=PROTOCOL, train_corpus="news",
                        train={"steps": 20, "batch_size": 2, "seqlen": 64, "eval_every": 5}, max_new_tokens=8)
    made = estimate_recovery(INFO, spec, SPEED, WINDOWS)
    phases = _phases(made)
    for phase in ("load", "dense_evaluation", "pruning", "evaluation_before", "training", "curve_evaluations",
                  "evaluation_after", "samples"):
        assert phases[phase] > 0, phase
    assert made["seconds"] > phases["training"] and made["steps"] == 20
    # Training: 20 steps of tokens, plus each step's fixed calls (forward, backward, optimizer: 3 calls).
    assert phases["training"] == pytest.approx(20 * made["seconds_per_step"] + 20 * 3 * SPEED["call_seconds"])
    staged = _phases(estimate_recovery(INFO, RecoverySpec(model="tiny-llama", protocol=PROTOCOL, train_corpus="news",
                                                          train=spec.train, schedule=(0.3,), max_new_tokens=8),
                                       SPEED, WINDOWS))
    assert staged["pruning"] == pytest.approx(2 * phases["pruning"])  # one prune per stage


def test_recovery_memory_counts_a_training_steps_activations_and_logits():
    """The embedded model's recovery peaked at 3.64 GB against 2.03 GB when only three copies of the weights were
    counted: a training step's saved activations and logits are most of it."""
    from pruning_core.recovery.estimate import estimate_recovery, training_bytes
    from pruning_core.recovery.run import RecoverySpec

    def peak(batch_size: int) -> int:
        spec = RecoverySpec(model="tiny-llama", protocol=PROTOCOL, train_corpus="news",
                            train={"steps": 2, "batch_size": batch_size, "seqlen": 64}, max_new_tokens=0)
        return estimate_recovery(INFO, spec, SPEED, WINDOWS)["peak_memory_bytes"]

    facts = run_costs.shape_facts(INFO)
    assert training_bytes(facts, 2, 64) > 2 * 64 * facts["vocab"] * 4  # at least the batch's logits
    # Training dominates this tiny model's run: twice the windows per step, twice the step's activations and logits.
    assert peak(8) - peak(4) == training_bytes(facts, 8, 64) - training_bytes(facts, 4, 64) > 0
    assert peak(4) >= run_costs.RUNTIME_BYTES + 2 * INFO["memory_bytes"] + training_bytes(facts, 4, 64)


def test_pruning_estimates_walk_at_the_calibration_dtype_the_setting_runs_with():
    """Wanda in pruned propagation walks under bf16 autocast by default (`prune.default_calib_dtype`): recovery,
    export and budget estimates timed it at the fp32 rate, 2.5x the sweep's estimate of the same point."""
    from pruning_core.prune import default_calib_dtype

    facts = run_costs.shape_facts(INFO)
    rates = run_costs.rates(facts, SPEED)
    assert default_calib_dtype("pruned", "wanda") == "bfloat16"
    assert run_costs.prune_seconds(facts, rates, "wanda", "pruned", PROTOCOL) == pytest.approx(
        run_costs.prune_seconds(facts, rates, "wanda", "pruned", PROTOCOL, calib_dtype="bfloat16"))
    assert run_costs.prune_seconds(facts, rates, "wanda", "pruned", PROTOCOL) < run_costs.prune_seconds(
        facts, rates, "wanda", "pruned", PROTOCOL, calib_dtype="float32")


def test_budget_search_counts_its_most_steps():
    from pruning_core.allocation.budget import BudgetSpec
    from pruning_core.allocation.budget_estimate import estimate_budget, search_steps
    from pruning_core.setting import Setting

    spec = BudgetSpec(model="tiny-llama", protocol=PROTOCOL, setting=Setting(method="wanda", allocation="uniform"),
                      max_increase=0.1)
    assert search_steps(spec) == 10 + 4  # 10 % coarse steps up to 95 %, then halvings of 10 points to 1
    made = estimate_budget(INFO, spec, SPEED, 40)
    phases = _phases(made)
    assert phases["evaluation"] == pytest.approx(14 * run_costs.evaluation_seconds(run_costs.rates(
        run_costs.shape_facts(INFO), SPEED), {"news": 4}, PROTOCOL.seqlen))
    assert phases["pruning"] > 0 and phases["dense_evaluation"] > 0 and "at most 14 steps" in made["assumptions"]
    assert _phases(estimate_budget(INFO, spec, SPEED, 40, dense_stored=True))["dense_evaluation"] == 0


def test_export_counts_pruning_evaluation_heatmap_samples_and_files():
    from pruning_core.export.estimate import estimate_export
    from pruning_core.export.pipeline import ExportOptions

    options = ExportOptions(method="wanda", eval_corpora=("news",), curve_sparsities=(0.3, 0.5, 0.7))
    phases = _phases(estimate_export(INFO, options, PROTOCOL, SPEED, WINDOWS, probe_windows_available=40))
    for phase in ("load", "pruning", "evaluation", "curve_points", "heatmap", "samples", "writing"):
        assert phases[phase] > 0, phase
    lean = ExportOptions(method="wanda", eval_corpora=("news",), heatmap=False, prompts=(), mask_artifact="abc")
    lean_phases = _phases(estimate_export(INFO, lean, PROTOCOL, SPEED, WINDOWS, dense_stored=True))
    assert lean_phases["heatmap"] == lean_phases["samples"] == lean_phases["pruning"] == 0
    assert lean_phases["evaluation"] == pytest.approx(phases["evaluation"] / 2)  # the dense one is stored


def test_after_a_sweep_ran_its_estimate_reads_every_point_from_the_store(tmp_path):
    """The Curves page said 26 min after every point was stored: the store's points are found by their keys."""
    from pruning_core.analysis.sweep import run_sweep
    from pruning_core.jobs.estimates import estimate_job
    from pruning_core.models import load_model
    from pruning_core.store import Store

    store = Store(tmp_path / "store.sqlite")
    loaded = load_model("tiny-llama")
    small = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=2, batch_size=4)
    spec = SweepSpec(model="tiny-llama", methods=("magnitude", "wanda"), sparsities=(0.3, 0.6),
                     eval_corpora=("news",), protocol=small)
    from pruning_core.analysis import estimates

    estimates.measured_speed(loaded, small.seqlen, small.dtype, store)  # measured once, as the dashboard's job does
    before = estimate_job("sweep", spec.to_dict(), loaded, store, measure=False)
    run_sweep(spec, loaded, store=store)
    after = estimate_job("sweep", spec.to_dict(), loaded, store, measure=False)
    assert before["breakdown"]["pruning"] > 0 and before["breakdown"]["evaluation"] > 0
    assert after["breakdown"]["pruning"] == after["breakdown"]["evaluation"] == after["breakdown"]["dense_eval"] == 0
    assert after["seconds"] == pytest.approx(after["breakdown"]["load"])
    assert "4 already in the store" in after["assumptions"]


def test_a_what_if_counts_its_sample_texts_and_mask_beside_its_point(tmp_path):
    from pruning_core.analysis import estimates
    from pruning_core.jobs.estimates import estimate_job
    from pruning_core.models import load_model
    from pruning_core.store import Store

    store = Store(tmp_path / "store.sqlite")
    loaded = load_model("tiny-llama")
    small = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=2, batch_size=4)
    estimates.measured_speed(loaded, small.seqlen, small.dtype, store)
    spec = {"model": "tiny-llama", "protocol": small.to_dict(), "eval_corpora": ["news"],
            "setting": {"method": "wanda", "sparsity": 0.5}}
    made = estimate_job("whatif", {**spec, "max_new_tokens": 16}, loaded, store, measure=False)
    none = estimate_job("whatif", {**spec, "max_new_tokens": 0}, loaded, store, measure=False)
    assert made["breakdown"]["samples"] > 0 and none["breakdown"]["samples"] == 0
    assert made["seconds"] == pytest.approx(sum(made["breakdown"].values()))


def test_fisher_folding_costs_more_per_weight_for_matrices_beyond_the_cache():
    """Folding a gradient into the maps took 4.4 ns per weight on SmolLM2-360M's shape (matrices up to 9.8 MB in
    fp32) and 11.8 ns on TinyLlama-1.1B's MLP (46 MB): one rate for both made the 360M first view 1.35x too long."""
    from pruning_core.analysis.estimates import (
        FOLD_SECONDS_PER_WEIGHT,
        FOLD_SECONDS_PER_WEIGHT_UNCACHED,
        fold_seconds_per_window,
    )

    small = run_costs.shape_facts(INFO)
    assert fold_seconds_per_window(small) == pytest.approx(small["prunable"] * FOLD_SECONDS_PER_WEIGHT)
    big = run_costs.shape_facts(LLAMA_3B)  # every matrix beyond the cache: MLP 100 MB, attention output 38 MB
    assert fold_seconds_per_window(big) == pytest.approx(big["prunable"] * FOLD_SECONDS_PER_WEIGHT_UNCACHED)


def test_structured_solver_math_runs_at_the_measured_fp32_matmul_rate_when_known():
    """A small model's forward runs small matmuls: a rate derived from it put SmolLM2-360M's structured run at 1.29x
    its time; the compensation's products run at the machine's large-matmul rate at every model size."""
    from pruning_core.analysis.estimates import fp32_matmul_flops
    from pruning_core.structured.estimate import MATMUL_RATE_SHARE, compensation_flops, estimate_structured, score_flops
    from pruning_core.structured.run import StructuredSpec

    spec = StructuredSpec(model="tiny-llama", protocol=PROTOCOL, ratios=(0.2,))
    facts = run_costs.shape_facts(INFO)
    slow, fast = (estimate_structured(INFO, spec, {**SPEED, "fp32_matmul_flops": rate}, WINDOWS)["breakdown"]
                  for rate in (1e9, 2e9))
    work = compensation_flops(facts, 0.2) + score_flops(facts)
    assert slow["pruning"] - fast["pruning"] == pytest.approx(work / (MATMUL_RATE_SHARE * 1e9) / 2)
    assert slow["statistics"] > fast["statistics"]
    assert fp32_matmul_flops(repeats=1) > 1e8  # measured: a real product, of at least 100 MFLOP/s

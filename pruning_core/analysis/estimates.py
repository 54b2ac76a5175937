"""Estimates of time and peak memory for a sweep or a sensitivity map, shown before the user commits.

The formulas count the work the algorithms actually do, in units of one measured quantity: the dense
model's forward throughput (tokens/s of a full forward: decoder layers + LM head). That time is split into
a per-layer part and a head part in proportion to their parameters (a decoder forward costs ~2 FLOPs per
parameter per token). Counted:
- layer walk (calibration statistics): one forward per layer over nsamples x seqlen tokens, plus the
  Hessian X X^T (2 d^2 FLOPs per token per distinct input of width d) when reconstruction or SparseGPT
  needs it; in ``pruned`` propagation the walk runs two forwards per layer (statistics, then the pruned
  outputs);
- SparseGPT per matrix: ~2 x out x in^2 FLOPs of OBS updates plus the in^3 of the Cholesky factors, and a
  Python loop step per column;
- evaluation: the windows perplexity will really use per corpus x seqlen tokens, a full forward each: at most
  `eval_windows`, and no more than the split holds (`evaluation_windows_used`: the paper protocol asks for
  10,000 windows of 2048 tokens, the embedded wiki split has a few dozen);
- exact sensitivity: per cell in layer l a probe through layers l..L-1 and the head, plus the dense probe;
  the Taylor proxy one forward + backward (~3 forwards) over its windows; the probe windows, like evaluation
  windows, are capped by what the calibration corpus's evaluation split holds.

`estimate_job` is the one estimate of a job (sweep, sensitivity map, what-if) that every page and command
shows: it measures this machine's throughput (cached) and counts the windows that will really be used, so
the same job is never given two different durations.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import replace

from pruning_core import run_costs
from pruning_core.run_costs import (DEFAULT_FLOPS, MASK_SECONDS_PER_WEIGHT,  # noqa: F401 - read by callers
                                    SPARSEGPT_COLUMN_OVERHEAD_S)

_shape_facts = run_costs.shape_facts
_rates = run_costs.rates
_hessian_seconds = run_costs.hessian_seconds
_mask_seconds = run_costs.mask_seconds


#: A probe window's forward + backward in forwards of it: 3 for fp32 weights (bf16 autocast where the CPU has it);
#: 3.3 for bf16-stored weights (SmolLM2-360M and TinyLlama-1.1B shapes, 2-core AMD EPYC: 2.39 s against 0.72 s and
#: 5.67 s against 1.72 s for 512 tokens, without the maps' folding, which an earlier 7.5 had taken in).
FISHER_FORWARDS = 3.0
FISHER_FORWARDS_BF16_WEIGHTS = 3.3
#: Seconds per prunable weight, window and map of folding a gradient into a map's two sums (the fp32 gradient, the
#: change recomputed, two products summed: passes over the matrix), for a matrix whose fp32 copy stays in the
#: CPU's cache (at most `FOLD_CACHE_BYTES`) and for a larger one: 4.4 ns per weight measured on SmolLM2-360M's
#: shape (largest matrix 9.8 MB in fp32) and 11.8 ns on TinyLlama-1.1B's MLP matrices (46 MB), 2-core AMD EPYC.
FOLD_SECONDS_PER_WEIGHT = 4.4e-9
FOLD_SECONDS_PER_WEIGHT_UNCACHED = 11.8e-9
FOLD_CACHE_BYTES = 16 * 2 ** 20


def fold_seconds_per_window(facts: dict) -> float:
    """Folding one window's gradients into one map (`second_order.gradient_moments`), seconds: the MLP matrices
    (hidden x the widest input) and the attention's (at most hidden x hidden), each at the rate of its size."""
    hidden, inner = facts["hidden"], max(facts["input_widths"])
    mlp = min(3 * hidden * inner, facts["per_layer"])  # Llama-like: gate, up and down

    def rate(rows: int, columns: int) -> float:
        return FOLD_SECONDS_PER_WEIGHT if 4 * rows * columns <= FOLD_CACHE_BYTES else FOLD_SECONDS_PER_WEIGHT_UNCACHED

    per_layer = mlp * rate(hidden, inner) + (facts["per_layer"] - mlp) * rate(hidden, hidden)
    return facts["layers"] * per_layer


def _memory_common(facts: dict, seqlen: int, batch: int) -> int:
    # The process's runtime (torch, transformers) + model weights + a batch of layer activations (~12 MLP-wide
    # tensors live inside a layer; bf16 for bf16-stored weights) + one window's logits in fp32 (and its softmax).
    value = run_costs.activation_bytes(facts)
    return int(run_costs.RUNTIME_BYTES + facts["memory"] + 12 * batch * seqlen * max(facts["input_widths"]) * value
               + run_costs.logits_bytes(facts, seqlen))


def _windows_line(windows: dict[str, int], asked: int, what: str) -> str:
    """ "evaluation windows used: wiki 9 (of 10,000 asked: the split holds no more)" for `assumptions`."""
    parts = [f"{corpus} {count:,}" for corpus, count in windows.items()]
    capped = any(count < asked for count in windows.values())
    return f"{what} used: {', '.join(parts)}" + (f" (of {asked:,} asked: the split holds no more)" if capped else "")


def estimate_sweep(model_info: dict, spec, throughput_tokens_per_s: float | None = None,
                   eval_windows_used: dict[str, int] | None = None, *, stored_statistics: str = "none",
                   stored_maps: Collection[str] = (), probe_windows_available: int | None = None,
                   workers: int = 1, device: str = "cpu", stored_points: Collection[int] = (),
                   dense_stored: bool = False, include_load: bool = True) -> dict:
    """Estimated seconds and peak memory (bytes) of `spec` (a `sweep.SweepSpec`) for the described model.

    stored_points: grid indices (`spec.grid()`) whose results the store holds: they cost nothing (a fully stored
    grid costs its model load and store reads). dense_stored: the dense perplexities are stored.
    include_load: count loading the model (a job loads it; `run_sweep` given a loaded model does not).

    Every point of `spec.grid()` is counted (each setting once per allocation), plus what the plans need, as
    `run_sweep` does it: one dense statistics walk shared by dense propagation and every plan that reads
    statistics ("owl"), the allocator's scoring of every weight per distinct plan, and for "sensitivity" the
    exact map of each method at `spec.map_sparsities()` (`estimate_sensitivity`).

    model_info: `LoadedModel.describe()`. throughput_tokens_per_s: a measured full-forward throughput
    (`measure_throughput`); without one a conservative CPU rate is assumed (said in `assumptions`).
    eval_windows_used: {corpus: windows} from `evaluation_windows_used`; each corpus counts
    min(eval_windows, that number) windows. Without it `eval_windows` is assumed to fit in every split.
    stored_statistics: the strongest dense statistics already in the store ("none", "act_sq", "hessian"); a
    walk they cover costs nothing. stored_maps: methods whose sensitivity map the sweep would reuse from the
    store. probe_windows_available: whole windows of the calibration corpus's evaluation split (the map's
    probe text; see `estimate_sensitivity`).
    workers: parallel workers of the executor (`executors.base.ExecutorConfig`; 1 = the local executor).
    The points' pruning and evaluation spread over min(workers, points) workers while the driver's part (dense
    evaluation, statistics, plans, maps) stays serial; each worker holds its own copy of the model, so the peak
    memory grows with them (the assumptions say how many were counted; the breakdown is of wall seconds).
    device: where the run computes ("cpu", "cuda", "cuda:1"); on a GPU `throughput_tokens_per_s` should be that
    GPU's offloaded rate (`measure_throughput(..., offload=)`), and "gpu_peak_memory_bytes" is added: the most
    one layer's visit holds on the GPU (`gpu_peak_bytes`), per worker.
    """
    from pruning_core.allocation.allocators import get_allocator
    from pruning_core.methods import covers, strongest_need

    facts = _shape_facts(model_info)
    rates = _rates(facts, throughput_tokens_per_s)
    protocol = spec.protocol
    calib_tokens = protocol.nsamples * protocol.seqlen
    windows = {corpus: min(int(protocol.eval_windows), int((eval_windows_used or {}).get(corpus, protocol.eval_windows)))
               for corpus in spec.eval_corpora}
    grid = spec.grid()
    allocators = {name: get_allocator(name) for _, name in grid}
    stored_points = {int(i) for i in stored_points}
    todo = [(index, config, allocation) for index, (config, allocation) in enumerate(grid)
            if index not in stored_points]
    breakdown = {"load": run_costs.load_seconds(facts) if include_load else 0.0,
                 "dense_eval": 0.0 if dense_stored else run_costs.evaluation_seconds(rates, windows, protocol.seqlen),
                 "statistics": 0.0, "plans": 0.0, "sensitivity_maps": 0.0, "pruning": 0.0, "evaluation": 0.0,
                 "store": 0.0}
    needs = {c.method_spec.needs for c, _ in grid}
    plan_needs = {a.needs for a in allocators.values()} - {"none", "sensitivity"}
    # One dense walk serves dense-propagation pruning of the points still to compute and every plan reading
    # statistics (plans are made for stored points too: their key holds the plan), as `run_sweep` does.
    todo_needs = [c.method_spec.needs for _, c, _ in todo] if spec.propagation == "dense" else []
    stats_need = strongest_need(list(plan_needs) + todo_needs)
    if stats_need != "none" and not covers(stored_statistics, stats_need):
        breakdown["statistics"] = run_costs.walk_seconds(facts, rates, protocol.nsamples, protocol.seqlen,
                                                         protocol.batch_size, stats_need)
    plans = {(allocation, c.method if allocators[allocation].needs == "sensitivity" else None, c.sparsity)
             for c, allocation in grid if allocation != "uniform"}
    # An allocator reading statistics scores every weight once per plan (OWL: |W| x ||X|| per layer); the
    # sensitivity allocator's greedy fill over layers x kinds cells is negligible beside its map.
    breakdown["plans"] = sum(facts["prunable"] * MASK_SECONDS_PER_WEIGHT for allocation, _, _ in plans
                             if allocators[allocation].needs not in ("none", "sensitivity"))
    map_methods = sorted({c.method for c, allocation in grid if allocators[allocation].needs == "sensitivity"}
                         - set(stored_maps))
    map_peak = 0
    for method in map_methods:
        made = estimate_sensitivity(model_info, protocol, method, spec.map_sparsities(), ["exact"],
                                    sweep_map_probe_windows(), throughput_tokens_per_s,
                                    probe_windows_available=probe_windows_available, include_load=False)
        breakdown["sensitivity_maps"] += made["seconds"]
        map_peak = max(map_peak, made["peak_memory_bytes"])
    # Per point, as `SweepWorker.run` does it: magnitude (both propagations) and dense-propagation Wanda rank each
    # matrix's scores at the method's first point (~3 selections) and only re-threshold later ones; pruned
    # propagation walks the model per point (statistics, then the pruned outputs); SparseGPT re-solves per point.
    unstructured = {}
    for c, _ in grid:
        if not c.structure_spec.is_nm:
            unstructured[c.method] = unstructured.get(c.method, 0) + 1
    ranked_seen: set[str] = set()
    point_eval = run_costs.evaluation_seconds(rates, windows, protocol.seqlen)
    for _, config, _ in todo:
        method = config.method_spec
        rerank = (unstructured.get(config.method, 0) > 1 and config.method != "sparsegpt"
                  and not config.structure_spec.is_nm and (method.needs == "none" or spec.propagation == "dense"))
        if rerank and config.method in ranked_seen:
            breakdown["pruning"] += _mask_seconds(facts, rates, config.method, ranked=True)
        else:
            breakdown["pruning"] += _mask_seconds(facts, rates, config.method) * (3 if rerank else 1)
            if rerank:
                ranked_seen.add(config.method)
        if spec.propagation == "pruned" and method.needs != "none":
            breakdown["pruning"] += run_costs.walk_seconds(facts, rates, protocol.nsamples, protocol.seqlen,
                                                           protocol.batch_size, method.needs, passes=2,
                                                           calib_dtype=config.calib_dtype)
        breakdown["evaluation"] += point_eval
        breakdown["store"] += run_costs.POINT_FIXED_S
    parallel = max(1, min(int(workers), max(len(todo), 1)))
    # The points run on `parallel` workers: their share of the wall time divides, the driver's does not.
    breakdown["pruning"] /= parallel
    breakdown["evaluation"] /= parallel
    seconds = sum(breakdown.values())
    # Peak memory: the largest of the phases, which do not overlap. A point to compute peaks while it is pruned
    # (`run_costs.pruning_peak_bytes`: weights, one layer's restore copy, bit-packed masks, SparseGPT's updated
    # weights, the walk's working set with every layer's statistics in dense propagation) or evaluated (weights,
    # masks, one batch's activations and logits); the plans' dense walk and the maps have their own.
    methods = {config.method: config.method_spec for _, config, _ in todo}
    # A re-thresholded method's score ranks stay for the whole sweep (`prune._prune_layer`'s `ranks`): int16 per
    # weight when ranked within rows shorter than 32768 (Wanda), else int32 (magnitude ranks whole matrices).
    ranks = sum(facts["prunable"] * (2 if methods[name].per_row and max(facts["input_widths"]) < 2**15 else 4)
                for name in ranked_seen)
    peaks = [run_costs.pruning_peak_bytes(facts, protocol, name, spec.propagation) + ranks for name in methods]
    # The evaluations' heap overhead is the walk's: the sweeps' measured peaks (walk and evaluations together) are
    # what WALK_HEAP_OVERHEAD_BF16_WEIGHTS was fitted to.
    peaks.append(run_costs.resident_bytes(_memory_common(facts, protocol.seqlen, protocol.batch_size)
                                          + (run_costs.mask_bytes(facts) if todo else 0) + ranks, facts,
                                          run_costs.WALK_HEAP_OVERHEAD_BF16_WEIGHTS))
    if plan_needs:
        peaks.append(run_costs.resident_bytes(run_costs.RUNTIME_BYTES + facts["memory"] + run_costs.walk_working_bytes(
            facts, protocol.nsamples, protocol.seqlen, protocol.batch_size, strongest_need(list(plan_needs)),
            all_layers=True), facts, run_costs.WALK_HEAP_OVERHEAD_BF16_WEIGHTS))
    peak = max(peaks + [map_peak])
    if parallel > 1:  # the driver's model and each worker's own copy, with its walk and masks
        peak *= parallel + 1
    allocation_names = list(dict.fromkeys(allocation for _, allocation in grid))
    what = f"{len(grid)} points"
    if stored_points:
        what += f" ({len(grid) - len(todo):,} already in the store: they cost nothing)"
    if allocation_names != ["uniform"]:
        what += f" (allocations {', '.join(allocation_names)}; {len(plans)} plans"
        what += (f"; exact sensitivity map of {', '.join(map_methods)} at "
                 f"{', '.join(f'{s:.0%}' for s in spec.map_sparsities())})" if map_methods else ")")
    if parallel > 1:
        what += f" on {parallel} parallel workers"
    out = {"seconds": float(seconds), "peak_memory_bytes": int(peak),
           "breakdown": {k: float(v) for k, v in breakdown.items()}}
    if str(device) != "cpu":
        what += f" on {device}, one decoder layer at a time (the model in host memory)"
        carried = max(calib_tokens, max(windows.values(), default=0) * protocol.seqlen)
        out["gpu_peak_memory_bytes"] = gpu_peak_bytes(facts, carried, protocol.seqlen, protocol.batch_size,
                                                      "hessian" in (needs | plan_needs))
    out["assumptions"] = _assumptions(rates, f"{what}, {spec.propagation} propagation; "
                                             + _windows_line(windows, protocol.eval_windows, "evaluation windows"))
    return out


def gpu_peak_bytes(facts: dict, carried_tokens: int, seqlen: int, batch: int, hessian: bool) -> int:
    """Bytes on the GPU while one decoder layer visits it (`devices.placement.LayerOffload`): the layer's fp32
    weights, the carried hidden states of every window (two fp32 buffers of tokens x hidden; a run carries what
    fits in half the free memory and walks the rest after, so this is the most it asks for), a batch's
    activations inside the layer, the layer's Hessians when the method needs them, and a batch's logits at the
    head. Weights of the rest of the model stay in host memory."""
    layer = facts["per_layer"] * 4
    carried = 2 * carried_tokens * facts["hidden"] * 4
    inside = 12 * batch * seqlen * max(facts["input_widths"]) * 4
    hessians = sum(w * w * 4 for w in facts["input_widths"]) if hessian else 0
    logits = 2 * batch * seqlen * facts["vocab"] * 4
    return int(layer + carried + inside + hessians + logits)


def sweep_map_probe_windows() -> int:
    """Probe windows of the sensitivity map a sweep computes for its "sensitivity" plans: `run_sweep` calls
    `compute_sensitivity` with its default, read here so the two cannot drift apart."""
    import inspect

    from pruning_core.analysis.sensitivity import compute_sensitivity

    return int(inspect.signature(compute_sensitivity).parameters["probe_windows"].default)


def estimate_sensitivity(model_info: dict, protocol, method: str, sparsities: Sequence[float],
                         metrics: Sequence[str], probe_windows: int,
                         throughput: float | dict | None = None, probe_windows_available: int | None = None,
                         workers: int = 1, include_load: bool = True) -> dict:
    """Estimated seconds and peak memory (bytes) of `sensitivity.compute_sensitivity` with these settings.

    workers: parallel workers of the executor: the exact rows spread over min(workers, rows) of them (each
    with its own model and probe cache), the rest stays on the driver.

    metrics may be the default ("auto",) (`sensitivity.REFINE`): counted as its two refinements, the
    second-order estimate and the exact map.

    probe_windows_available: whole seqlen windows in the calibration corpus's evaluation split (the probe's
    text, `evaluation_windows_used`); the probe uses min(probe_windows, that number).
    With the default refinement the result also has "first_view_seconds": when the second-order estimate, the
    page's first view, is ready (load, dense probe, statistics, masks, one backward per probe window).
    include_load: count loading the model (a job loads it; a map inside a sweep does not).
    """
    from pruning_core.methods import get_method
    from pruning_core.analysis import sensitivity as _sensitivity

    TAYLOR_WINDOWS = _sensitivity.TAYLOR_WINDOWS
    proxies = tuple(getattr(_sensitivity, "PROXIES", ("reconstruction", "taylor")))
    facts = _shape_facts(model_info)
    rates = _rates(facts, throughput)
    L, M = facts["layers"], max(len(facts["kinds"]), 1)
    probe_windows = min(int(probe_windows), int(probe_windows_available or probe_windows))
    probe_tokens = probe_windows * protocol.seqlen
    metrics = list(metrics)
    refine = getattr(_sensitivity, "REFINE", "auto")
    refined = refine in metrics
    if refined:  # the default refinement computes the second-order estimate, then the exact map
        metrics = list(dict.fromkeys(m for metric in metrics
                                     for m in (("fisher", "exact") if metric == refine else (metric,))))
    # Proxies alone: the exact metric is still measured on a few sampled rows, to report their agreement.
    sample_rows = 0 if "exact" in metrics or not set(metrics) & set(proxies) else \
        min(L, int(getattr(_sensitivity, "AGREEMENT_SAMPLE_LAYERS", 0)))
    needs = get_method(method).needs if set(metrics) & {"exact", "reconstruction"} or sample_rows else "none"
    if "reconstruction" in metrics:
        needs = "hessian"
    breakdown = {"load": run_costs.load_seconds(facts) if include_load else 0.0,
                 "dense_probe": run_costs.forward_seconds(rates, probe_windows, protocol.seqlen), "statistics": 0.0,
                 "taylor": 0.0, "fisher": 0.0, "masks": 0.0, "exact_probes": 0.0, "reconstruction": 0.0}
    if refined:  # the first view's masks use its own windows; the exact map walks again with all of them
        from pruning_core.analysis.refinement import FIRST_VIEW_NSAMPLES

        first = min(int(protocol.nsamples), FIRST_VIEW_NSAMPLES)
        breakdown["statistics"] = run_costs.walk_seconds(facts, rates, first, protocol.seqlen,
                                                         protocol.batch_size, needs)
        if protocol.nsamples > first:
            breakdown["exact_statistics"] = run_costs.walk_seconds(facts, rates, protocol.nsamples, protocol.seqlen,
                                                                   protocol.batch_size, needs)
    else:
        breakdown["statistics"] = run_costs.walk_seconds(facts, rates, protocol.nsamples, protocol.seqlen,
                                                         protocol.batch_size, needs)
    if "taylor" in metrics:
        breakdown["taylor"] = 3.0 * min(TAYLOR_WINDOWS, protocol.nsamples) * protocol.seqlen * rates["full_s_per_token"]
    n_s = len(sparsities)
    if "fisher" in metrics:  # one forward + backward per probe window, each module's gradient folded into the maps
        backward = FISHER_FORWARDS_BF16_WEIGHTS if run_costs.low_precision_weights(facts) else FISHER_FORWARDS
        breakdown["fisher"] = (backward * run_costs.forward_seconds(rates, probe_windows, protocol.seqlen)
                               + probe_windows * n_s * fold_seconds_per_window(facts))
    breakdown["masks"] = n_s * _mask_seconds(facts, rates, method)
    rows_parallel = 1  # workers sharing the exact rows (of the maps, or of the agreement sample)
    if "exact" in metrics or sample_rows:
        rows = range(L) if "exact" in metrics else [round(i * (L - 1) / max(sample_rows - 1, 1))
                                                     for i in range(sample_rows)]
        layer_forwards = sum((L - l) for l in rows) * (M + 1)  # each cell + the whole-layer aggregate
        calls = -(-probe_windows // run_costs.EVAL_BATCH)  # forward calls per probe of a cell
        breakdown["exact_probes"] = n_s * (probe_tokens * (layer_forwards * rates["layer_s_per_token"]
                                                           + len(rows) * (M + 1) * rates["head_s_per_token"])
                                           + calls * (layer_forwards + len(rows) * (M + 1)) * rates["layer_call_s"])
        rows_parallel = max(1, min(int(workers), n_s * len(rows)))
        breakdown["exact_probes"] /= rows_parallel  # rows are independent tasks
    if "reconstruction" in metrics:
        breakdown["reconstruction"] = n_s * 4.0 * facts["prunable"] * max(facts["input_widths"]) / rates["fp32_flops"]
    seconds = sum(breakdown.values())
    value = run_costs.activation_bytes(facts)
    probe_cache = (L + 1) * probe_tokens * facts["hidden"] * value  # `walk.carried_dtype`
    stats_bytes = L * sum(w * w * 4 for w in facts["input_widths"]) if needs == "hessian" else \
        L * sum(w * 8 for w in facts["input_widths"])
    taylor_bytes = 2 * facts["prunable"] * 4 if "taylor" in metrics else 0  # gradients + |W*G| scores
    # Every sparsity's masks are kept bit-packed (`_MaskCache`), with SparseGPT's updated weights in fp32.
    masks = n_s * (run_costs.mask_bytes(facts) + (facts["prunable"] * 4 if method == "sparsegpt" else 0))
    # The phases that do not overlap: the statistics walk, the gradient passes, the exact probes.
    walk = run_costs.walk_working_bytes(facts, protocol.nsamples, protocol.seqlen, protocol.batch_size, needs) \
        if needs != "none" else 0
    logits = run_costs.logits_bytes(facts, protocol.seqlen)
    inner = max(facts["input_widths"])
    # One window's backward (`second_order.gradient_moments` with the maps' changes folded in): the activations
    # autograd saves (~10 hidden-wide and 4 MLP-wide values per token and layer), the logits, and one module's
    # gradient with its fp32 copy, square, change and weight (the others are freed as they are folded).
    fisher = (run_costs.saved_activation_bytes(facts, protocol.seqlen, value) + logits
              + 18 * facts["hidden"] * inner) if "fisher" in metrics else 0
    exact = (probe_cache + 12 * protocol.batch_size * protocol.seqlen * inner * value + logits) \
        if "exact" in metrics or sample_rows else 0
    peak = run_costs.RUNTIME_BYTES + facts["memory"] + stats_bytes + taylor_bytes + masks + max(walk, fisher, exact)
    what = f"{n_s} sparsities x {len(metrics)} metrics, {L * M} cells + {L} whole-layer probes per exact map, " \
           f"{probe_windows} probe windows"
    if rows_parallel > 1:  # each worker holds a model, its probe cache and the masks of its rows
        peak += rows_parallel * (facts["memory"] + probe_cache + masks)
        what += f"; exact rows on {rows_parallel} parallel workers"
    out = {"seconds": float(seconds), "peak_memory_bytes": run_costs.resident_bytes(peak, facts),
           "breakdown": {k: float(v) for k, v in breakdown.items()}}
    if refined:  # the page's first view: the second-order estimate, shown before the exact rows start
        out["first_view_seconds"] = float(sum(breakdown[k] for k in ("load", "dense_probe", "statistics", "fisher",
                                                                     "masks")))
        what += f"; first view (second-order estimate) after about {out['first_view_seconds']:.0f} s"
    out["assumptions"] = _assumptions(rates, what)
    return out


def _assumptions(rates: dict, what: str) -> str:
    return (f"{what}; {run_costs.speed_words(rates)}; forward time split between decoder layers and head by "
            "parameter count; memory = the Python runtime + weights + the copy that restores them + activations + "
            "statistics + masks")


#: Windows timed for a GPU's throughput: with layer offload each layer's transfer is shared by every window
#: carried through it, so a rate from 2 windows would undercount what a run of dozens of windows reaches.
OFFLOAD_THROUGHPUT_WINDOWS = 16


def measure_throughput(loaded, seqlen: int, dtype: str = "float32", store=None, offload=None,
                       measure: bool = True) -> float | None:
    """Full-forward throughput (tokens/s) of `loaded`: `measured_speed`'s "tokens_per_s" (None when not stored
    and measure=False)."""
    speed = measured_speed(loaded, seqlen, dtype, store, offload, measure)
    return None if speed is None else float(speed["tokens_per_s"])


#: Timed repeats of each measurement; the median is kept. The fastest of two made every estimate on a busy
#: machine as short as its luckiest moment (a forward of a small model varies 8x under load: 0.6 to 5 ms).
SPEED_REPEATS = 3
#: Seconds of timed forwards to fill at least (up to `SPEED_MAX_REPEATS` repeats).
SPEED_MIN_SECONDS = 1.5
SPEED_MAX_REPEATS = 101


def measured_speed(loaded, seqlen: int, dtype: str = "float32", store=None, offload=None,
                   measure: bool = True) -> dict | None:
    """This machine's speed for `loaded` (`run_costs`): {"tokens_per_s" (full forwards of 2 windows of <= 512
    tokens), "call_seconds" (one forward of a single 8-token window: the fixed cost of a call), "busy_share"
    (of the machine's CPU time used by other processes while it was timed, `machine_load.others_busy_share`)}; each the
    median of `SPEED_REPEATS` timed runs after a warm-up.

    offload: an `devices.placement.LayerOffload` to a GPU: the rate of the layer-by-layer evaluation a run on
    that device does (`metrics.perplexity` with the offload, `OFFLOAD_THROUGHPUT_WINDOWS` windows), measured once
    per GPU model and cached like the CPU rate.
    Cached in `store` (if given) per model fingerprint, dtype, window length and thread count (and GPU name).
    measure=False: only look it up in `store`; None when it was never measured (the dashboard then measures it in
    a short job, `run_throughput_job`, instead of running model forwards in its own process).
    """
    import statistics

    import torch

    from pruning_core.devices.placement import device_key
    from pruning_core.machine_load import busy_share_during

    on_gpu = device_key(offload) is not None
    # 2 x 512 tokens, not one short window: smaller matmuls run less efficiently, and timing one 256-token window
    # made the estimate of a map of 8 x 512-token probes 1.6x too long on the embedded model.
    tokens = int(min(max(seqlen, 2), 512))
    windows = OFFLOAD_THROUGHPUT_WINDOWS if on_gpu else 2
    key = None
    if store is not None:
        from pruning_core.store import content_hash

        identity = {"kind": "throughput", "model": loaded.fingerprint, "dtype": dtype, "tokens": tokens,
                    "windows": windows, "threads": torch.get_num_threads(), "statistic": "median+call+fp32mm"}
        if on_gpu:
            identity["device"] = torch.cuda.get_device_name(offload.compute)
        key = content_hash(identity)
        cached = store.get_result(key)
        if cached is not None:
            return {"tokens_per_s": float(cached["tokens_per_s"]),
                    "call_seconds": float(cached.get("call_seconds") or 0.0),
                    "busy_share": cached.get("busy_share"),
                    **({"fp32_matmul_flops": float(cached["fp32_matmul_flops"])}
                       if cached.get("fp32_matmul_flops") else {})}
    if not measure:
        return None
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (windows, tokens), generator=torch.Generator().manual_seed(0))
    short = ids[:1, :8]
    timings, calls = [], []
    busy = busy_share_during(lambda: _time_forwards(loaded, ids, short, dtype, offload, on_gpu, timings, calls))
    seconds, call = statistics.median(timings), statistics.median(calls)
    # time = call + tokens / rate, from the two shapes: on a tiny model nearly all of a forward is its call, on
    # the embedded one nearly all is tokens. A noisy reading with the long forward no slower falls back to the
    # long forward's rate alone.
    long_tokens, short_tokens = windows * tokens, int(short.numel())
    if seconds > call and long_tokens > short_tokens:
        rate = (long_tokens - short_tokens) / (seconds - call)
        call = max(call - short_tokens / rate, 0.0)
    else:
        rate, call = long_tokens / max(seconds, 1e-9), 0.0
    speed = {"tokens_per_s": rate, "call_seconds": call, "busy_share": busy}
    if not on_gpu:
        speed["fp32_matmul_flops"] = fp32_matmul_flops()
    if store is not None:
        store.put_result(key, "throughput", {**speed, "seconds": seconds, "tokens": tokens})
    return speed


#: Side of the square fp32 matrices `fp32_matmul_flops` multiplies: the size of the solver math's products (Gram
#: matrices, refits), where a model's forward rate says little about it (SmolLM2-360M's small matmuls run at 0.8x
#: a 3B model's, its structured compensation's products at the same rate).
MATMUL_PROBE_SIDE = 2048


def fp32_matmul_flops(repeats: int = SPEED_REPEATS) -> float:
    """This machine's fp32 matrix-product rate, FLOP/s: the median of `repeats` timed products of two
    `MATMUL_PROBE_SIDE`-square fp32 matrices after a warm-up (about 0.1 s each on 2 cores)."""
    import statistics
    import time

    import torch

    a = torch.randn(MATMUL_PROBE_SIDE, MATMUL_PROBE_SIDE, generator=torch.Generator().manual_seed(0))
    out = torch.empty_like(a)
    torch.mm(a, a, out=out)
    timings = []
    for _ in range(max(int(repeats), 1)):
        start = time.perf_counter()
        torch.mm(a, a, out=out)
        timings.append(time.perf_counter() - start)
    return 2.0 * MATMUL_PROBE_SIDE ** 3 / max(statistics.median(timings), 1e-9)


def _time_forwards(loaded, ids, short, dtype: str, offload, on_gpu: bool, timings: list, calls: list) -> None:
    """Append `SPEED_REPEATS` timings of a forward of `ids` to `timings` and of `short` to `calls` (seconds)."""
    import torch

    from pruning_core.evaluate import timed_perplexity
    from pruning_core.metrics import autocast_for, window_nll

    if on_gpu:
        timed_perplexity(loaded, ids, dtype, 8, offload)  # the first walk pays CUDA start-up and kernel selection
        for _ in range(SPEED_REPEATS):
            timings.append(timed_perplexity(loaded, ids, dtype, 8, offload).seconds)
            calls.append(timed_perplexity(loaded, short, dtype, 8, offload).seconds)
        return
    with torch.inference_mode(), autocast_for(dtype):
        # The first call at a shape pays allocation and kernel selection (bf16 especially): warm up at both shapes.
        window_nll(loaded, ids)
        window_nll(loaded, short)
        # Each shape at least `SPEED_REPEATS` times and, while they are short, until SPEED_MIN_SECONDS are filled:
        # on a shared machine one forward of a small model takes 0.6 ms or, when the scheduler hands its core to
        # another process, 100 ms; the median of many is the typical call, that of three is a lottery.
        # The two shapes alternate, so both medians see the same moments of the machine.
        began = time.perf_counter()
        while len(timings) < SPEED_REPEATS or (time.perf_counter() - began < SPEED_MIN_SECONDS
                                               and len(timings) < SPEED_MAX_REPEATS):
            for batch, into in ((ids, timings), (short, calls)):
                start = time.perf_counter()
                window_nll(loaded, batch)
                into.append(time.perf_counter() - start)


def split_tokens(loaded, corpus: str, split: str = "evaluation", column: str | None = None, store=None) -> int:
    """Tokens of one corpus split under `loaded`'s tokenizer (cached in `store` per model and split text)."""
    from pruning_core import data

    text = data.load_corpus_text(corpus, split, column)
    key = None
    if store is not None:
        from pruning_core.store import content_hash

        key = content_hash({"kind": "split_tokens", "model": loaded.fingerprint, "corpus": str(corpus),
                            "split": split, "chars": len(text), "sha256": data.corpus_identity(corpus, split,
                                                                                               column)["sha256"]})
        cached = store.get_result(key)
        if cached is not None:
            return int(cached["tokens"])
    tokens = int(data.token_ids(loaded.tokenizer, text).numel())
    if store is not None:
        store.put_result(key, "split_tokens", {"tokens": tokens})
    return tokens


def evaluation_windows_used(loaded, corpora: Sequence[str], protocol, store=None,
                            column: str | None = None) -> dict[str, int]:
    """{corpus: windows} that perplexity will really evaluate: min(eval_windows, whole seqlen windows of the
    corpus's evaluation split), as `data.evaluation_windows` takes them."""
    return {corpus: min(int(protocol.eval_windows),
                        split_tokens(loaded, corpus, "evaluation", column, store) // int(protocol.seqlen))
            for corpus in corpora}


def estimate_job(kind: str, spec: dict, loaded, store=None, *, device=None, workers: int | None = None,
                 measure: bool = True, unmeasured: bool = False) -> dict | None:
    """The estimate of a job as the dashboard and the CLI show it: {"seconds", "peak_memory_bytes",
    "breakdown", "assumptions"}, or None for a kind without an estimate.

    kind/spec: a job of `pruning_core.jobs.runner` ("sweep": `SweepSpec.to_dict()`; "sensitivity":
    {"protocol", "method", "sparsities", "metrics", "probe_windows"}; "whatif": {"protocol", "method",
    "structure", "sparsity", "eval_corpora"}). Uses this machine's measured throughput (`measure_throughput`,
    cached in `store`) and the windows each split really holds, so one job gets one duration everywhere.
    device: where a sweep computes (None = the CPU): on a GPU the throughput is that GPU's, measured once with
    the layer offload and cached. workers: the executor's parallel workers for a sweep's points or a map's exact
    rows (None = what the spec's "executor" names: 1 for the local executor, the default).
    measure=False: None instead of timing model forwards when this machine's throughput is not stored yet;
    unmeasured=True: then the estimate with the conservative default speed instead of None (its memory is the
    same: the memory check needs no measurement).
    """
    from pruning_core.analysis.sweep import SweepSpec
    from pruning_core.protocol import Protocol

    if kind not in ("sweep", "sensitivity", "whatif"):  # the other kinds: `jobs.estimates.estimate_job`
        return None
    protocol = Protocol(**spec["protocol"])
    info = loaded.describe()
    offload = None
    if device is not None and kind == "sweep":
        from pruning_core.devices.placement import offload_for, resolve_device

        device = resolve_device(str(device))
        offload = offload_for(device)
    rate = measured_speed(loaded, protocol.seqlen, protocol.dtype, store, offload, measure=measure)
    if rate is None and not unmeasured:
        return None
    if workers is None and kind in ("sweep", "sensitivity"):  # jobs run on the executor their spec names
        from pruning_core.executors.base import ExecutorConfig

        executor = ExecutorConfig.from_dict(spec.get("executor") or {})
        workers = int(executor.workers) if executor.kind == "ray" else 1
    workers = int(workers or 1)
    if kind == "sensitivity":
        available = evaluation_windows_used(loaded, [protocol.calib], replace(protocol, eval_windows=10**9),
                                            store, protocol.calib_column)[protocol.calib]
        made = estimate_sensitivity(info, protocol, spec["method"], spec["sparsities"], spec["metrics"],
                                    int(spec.get("probe_windows", 8)), rate, probe_windows_available=available,
                                    workers=workers)
        return with_corpus_memory(made, loaded, protocol, [(protocol.calib, "evaluation")], store)
    if kind == "sweep":
        sweep = SweepSpec.from_dict(spec)
    else:
        from pruning_core.analysis.whatif import WhatIfSpec

        setting_spec = WhatIfSpec.from_dict(spec)
        setting = setting_spec.setting  # a what-if is a sweep of its one setting
        sweep = SweepSpec(model=spec.get("model", "embedded"), methods=(setting.method,),
                          structures=(setting.structure,), sparsities=(float(setting.sparsity),),
                          eval_corpora=tuple(spec["eval_corpora"]), protocol=protocol,
                          propagation=setting.propagation or "pruned")
    windows = evaluation_windows_used(loaded, sweep.eval_corpora, protocol, store)
    stored_statistics, stored_maps = _stored_plan_inputs(loaded, sweep, store, offload)
    available = None
    if stored_maps is not None:  # the sweep computes a map: its probe reads the calibration corpus's evaluation split
        available = evaluation_windows_used(loaded, [protocol.calib], replace(protocol, eval_windows=10**9),
                                            store, protocol.calib_column)[protocol.calib]
    stored_points, dense_stored = (stored_sweep_points(loaded, sweep, store, offload) if kind == "sweep"
                                   else (set(), _dense_stored(loaded, sweep, store, offload)))
    made = estimate_sweep(info, sweep, rate, eval_windows_used=windows, stored_statistics=stored_statistics,
                          stored_maps=stored_maps or (), probe_windows_available=available,
                          workers=workers if kind == "sweep" else 1,
                          device=str(device) if offload is not None else "cpu", stored_points=stored_points,
                          dense_stored=dense_stored)
    if kind == "whatif":  # beside its one point: the dense and pruned sample texts, and the mask it saves
        facts = _shape_facts(info)
        rates = _rates(facts, rate)
        extra = {"samples": run_costs.generation_seconds(facts, rates, 1, int(setting_spec.max_new_tokens)),
                 "saving": run_costs.save_seconds(facts["prunable"] / 8)}
        made = {**made, "seconds": made["seconds"] + sum(extra.values()),
                "breakdown": {**made["breakdown"], **extra},
                "assumptions": made["assumptions"] + f"; {setting_spec.max_new_tokens} sample tokens per model"}
    return with_corpus_memory(made, loaded, protocol, [(c, "evaluation") for c in sweep.eval_corpora], store)


def _dense_stored(loaded, sweep, store, offload=None) -> bool:
    """Whether the dense perplexity of every evaluation corpus of `sweep` is in `store` (`evaluate.dense_key`)."""
    if store is None:
        return False
    from pruning_core.evaluate import dense_key
    from pruning_core.store import content_hash

    return all(store.get_result(content_hash(dense_key(loaded, sweep.protocol, corpus, offload))) is not None
               for corpus in sweep.eval_corpora)


def stored_sweep_points(loaded, sweep, store, offload=None) -> tuple[set[int], bool]:
    """({grid indices of `sweep` whose point `store` holds}, dense perplexities stored): the keys `run_sweep`
    reads. Points with a plan are keyed by the plan's table, which is only made by running the allocator, so
    they count as still to compute (an estimate on the long side)."""
    if store is None:
        return set(), False
    from pruning_core.analysis.sweep import point_key
    from pruning_core.devices.placement import device_key
    from pruning_core.protocol import corpus_key
    from pruning_core.store import content_hash

    protocol = sweep.protocol
    calib = corpus_key(protocol.calib, "calibration", protocol.calib_column)
    evals = {corpus: corpus_key(corpus, "evaluation")["sha256"] for corpus in sweep.eval_corpora}
    device = device_key(offload)
    # One read of the stored point keys, then set look-ups: a look-up per point cost ~0.5 ms on a busy machine.
    have = {row["key"] for row in store.execute("SELECT key FROM results WHERE kind = ?", ("sweep_point",))}
    stored = {index for index, (config, allocation) in enumerate(sweep.grid()) if allocation == "uniform"
              and content_hash(point_key(loaded.fingerprint, calib, protocol, config, evals, device)) in have}
    return stored, _dense_stored(loaded, sweep, store, offload)


#: Bytes the tokenizer holds per character of the piece it is encoding (about 280 bytes per token of offsets,
#: strings and ids, at 3-4 characters per token), measured on the embedded tokenizer.
TOKENIZER_BYTES_PER_CHAR = 80


def corpus_memory_bytes(loaded, protocol, splits, store=None) -> int:
    """The memory the corpora of a run take (bytes): each split's text (held by the reader and once joined),
    its token ids (int32, cached) and the tokenizer's work on one piece (`data.TOKENIZE_CHARS`) at a time.
    `splits`: [(corpus, split)]; the calibration split is always counted."""
    from pruning_core import data

    total, pieces = 0, 0
    for corpus, split in [(protocol.calib, "calibration"), *splits]:
        column = protocol.calib_column if corpus == protocol.calib else None
        chars = len(data.load_corpus_text(corpus, split, column))
        total += 2 * chars + 4 * split_tokens(loaded, corpus, split, column, store)
        pieces = max(pieces, min(chars, data.TOKENIZE_CHARS))
    return total + TOKENIZER_BYTES_PER_CHAR * pieces


def with_corpus_memory(made: dict, loaded, protocol, splits, store=None) -> dict:
    """An estimate with `corpus_memory_bytes` added to its peak memory and said in its assumptions."""
    extra = corpus_memory_bytes(loaded, protocol, splits, store)
    return {**made, "peak_memory_bytes": int(made["peak_memory_bytes"]) + extra,
            "assumptions": made["assumptions"] + f"; corpora in memory: {extra / 1e6:,.1f} MB (texts, token ids, "
                                                 "one tokenized piece)"}


def _stored_plan_inputs(loaded, sweep, store, offload=None) -> tuple[str, set[str] | None]:
    """What the plans of `sweep` find in `store`: the strongest dense statistics stored for its calibration
    ("none" without), and the methods whose exact sensitivity map `run_sweep` would reuse (None when no point
    has a "sensitivity" plan). The keys are the ones `cached_statistics` and `compute_sensitivity` look up."""
    from pruning_core.allocation.allocators import get_allocator
    from pruning_core.methods import NEEDS

    map_methods = {c.method for c, allocation in sweep.grid() if get_allocator(allocation).needs == "sensitivity"}
    if store is None:
        return "none", (set() if map_methods else None)
    from pruning_core.store import content_hash
    from pruning_core.statistics_cache import statistics_key

    protocol = sweep.protocol
    stored = "none"
    for need in NEEDS[1:]:  # weakest first: the last one found is the strongest
        found = store.get_result(content_hash(statistics_key(loaded, protocol, need, offload)))
        if found is not None and store.artifact_info(found["artifact"]) is not None:
            stored = need
    if not map_methods:
        return stored, None
    from pruning_core.analysis import sensitivity
    from pruning_core.protocol import corpus_key

    calib_identity = corpus_key(protocol.calib, "calibration", protocol.calib_column)
    probe_identity = corpus_key(protocol.calib, "evaluation", protocol.calib_column)["sha256"]
    layers = list(range(len(loaded.adapter.decoder_layers(loaded.model))))
    maps = {method for method in map_methods
            if all(store.get_result(content_hash(sensitivity.map_key(
                loaded, calib_identity, probe_identity, protocol, method, "exact", s, sweep_map_probe_windows(),
                protocol.dtype, layers, sensitivity.TAYLOR_WINDOWS))) is not None
                   for s in sweep.map_sparsities())}
    return stored, maps


#: Fraction of a job after which its own measured rate alone gives the time left (before it, the estimate
#: shown before the run is blended in: early rates are noisy, and two different figures for the same job, one
#: before and one just after pressing Run, read as a contradiction).
RATE_TRUSTED_FRACTION = 0.3


def time_left(estimate_seconds: float | None, elapsed: float, fraction: float,
              rate_eta: float | None = None) -> float | None:
    """Seconds left of a running job: the estimate's remainder at the start, the job's own rate later.

    estimate_seconds: `estimate_job`'s seconds for the job (None if unknown); elapsed: seconds since it
    started; fraction: its progress in [0, 1]; rate_eta: the rate-based remainder the job reports
    (elapsed x (1 - fraction) / fraction), None before the first progress. The weight of the rate grows
    linearly to 1 at `RATE_TRUSTED_FRACTION`.
    """
    fraction = min(max(float(fraction), 0.0), 1.0)
    planned = None if estimate_seconds is None else max(float(estimate_seconds) * (1.0 - fraction),
                                                         float(estimate_seconds) - float(elapsed), 0.0)
    if rate_eta is None:
        return planned
    if planned is None:
        return float(rate_eta)
    weight = min(fraction / RATE_TRUSTED_FRACTION, 1.0)
    return weight * float(rate_eta) + (1.0 - weight) * planned


def run_throughput_job(spec: dict, store, progress) -> dict:
    """Job entry (`jobs.JOB_KINDS["throughput"]`): measure and store this machine's throughput for
    {"model", "seqlen", "dtype"}, so that every later estimate of that model reads it without running the model.
    Returns {"tokens_per_s"}."""
    from pruning_core.models import load_model

    loaded = load_model(spec["model"], progress=lambda f, m: progress(0.5 * f, m))
    progress(0.5, "timing a few forward passes of this model on this machine")
    rate = measure_throughput(loaded, int(spec["seqlen"]), str(spec.get("dtype") or "float32"), store)
    progress(1.0, "done")
    return {"tokens_per_s": rate}

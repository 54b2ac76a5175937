"""Seconds of the phases runs are made of, in units of this machine's measured speed (ground floor).

Every run estimate (`analysis.estimates` for sweeps, maps and what-ifs, `structured.estimate`,
`continual.estimate`, `recovery.estimate`, `allocation.budget_estimate`, `export.estimate`, dispatched by job
kind in `jobs.estimates`) adds up these phases, so one phase costs the same in every run that has it.

The measured speed (`analysis.estimates.measured_speed`) has two parts:
- tokens_per_s: the full-forward throughput (decoder layers + head) of a few long windows; a token's share of a
  decoder layer and of the head is split by parameter count (a forward costs ~2 FLOPs per parameter per token);
- call_seconds: the wall time of one forward of a single 8-token window: the fixed cost of one call through
  every layer (Python, kernel launches, thread hand-offs). On a small model (the tiny test models) it is most of
  the time of a step, and counting tokens alone made estimates 30-50x short; on the embedded model it is small.
Without a measurement a conservative CPU rate is assumed and no call cost (said in the assumptions).
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Union

#: Fallback when nothing was measured: sustained FLOP/s of a small CPU (2 cores, fp32, PyTorch).
DEFAULT_FLOPS = 40e9
#: Seconds of Python overhead per SparseGPT column step (measured order of magnitude on a CPU).
SPARSEGPT_COLUMN_OVERHEAD_S = 30e-6
#: Seconds per weight of top-k mask selection (scores, kthvalue + tie handling) for magnitude/Wanda: 18 ns
#: measured on TinyLlama-1.1B's shape in bf16 (0.8 s per 44M-weight layer, 2-core AMD EPYC), where matrices no
#: longer fit the caches (8 ns on the embedded model's).
MASK_SECONDS_PER_WEIGHT = 18e-9
#: fp32 matmul rate over bf16 matmul rate on a CPU with native bf16 (AVX512-BF16: about 130 against 390 GFLOP/s
#: on a 2-core AMD EPYC; a CPU with AMX has a larger gap, so estimates there stay on the short side).
FP32_OVER_BF16_MATMUL = 1 / 3
#: Seconds per input value of the statistics hooks (`stats.InputStatistics.add_batch`: fp32 cast, square, float64
#: column sums): 4.6 ns measured on a 4096 x 5632 bf16 input (2-core AMD EPYC), about 40 % of a layer's forward
#: time for a bf16 model, which the forward's rate alone did not count.
STATISTICS_SECONDS_PER_VALUE = 4.5e-9
#: Seconds per weight of re-thresholding stored score ranks (a sweep's later sparsities of one method: one
#: comparison per weight instead of a selection).
RETHRESHOLD_SECONDS_PER_WEIGHT = 1.5e-9
#: Fixed seconds per matrix and mask (tensor allocations, the mask's bookkeeping), beside the per-weight cost.
MATRIX_CALL_S = 0.4e-3
#: Fixed seconds per finished point (its store key and write, progress writes).
POINT_FIXED_S = 0.01
#: Windows per forward call of the evaluation (`metrics.perplexity`'s batch).
EVAL_BATCH = 4
#: Model load: fixed seconds (tokenizer, config, architecture) plus bytes of weights read per second from the
#: converted safetensors cache.
LOAD_FIXED_S = 1.5
LOAD_BYTES_PER_S = 400e6
#: Bytes per second written when a run saves a model or masks (safetensors on a local disk, with the copy).
SAVE_BYTES_PER_S = 150e6
#: Bytes per second a decode step reads its weights at (one step reads every weight once: memory bound).
DECODE_BYTES_PER_S = 6e9
#: bf16 forwards on a CPU without native bf16 matmuls (the speed timing runs both dtypes) against fp32.
BF16_CPU_SLOWDOWN = 1.5
#: Resident bytes of a process that imported torch, transformers and this library, before any model: every run
#: pays it once per process (0.40 GB measured with torch 2.13+cpu and transformers 5 on Linux, tiny model loaded).
RUNTIME_BYTES = 400_000_000
#: Resident memory of a working set (what is alive beside the runtime and the weights) over its live bytes, for
#: bf16-stored weights, outside the layer walk: first maps on random models of TinyLlama-1.1B and Llama-3.2-3B
#: shapes peaked 1.8-1.9x their working sets above the weights (docs/runs/scale.json): glibc keeps freed bf16
#: activations and fp32 temporaries in its heap. Estimates of fp32 models, whose live sums came out 8-19 % above
#: their measured peaks, are not raised.
HEAP_OVERHEAD_BF16_WEIGHTS = 1.8
#: The same ratio for the layer walk (pruning, statistics), which hands the heap's free pages back after each
#: layer (`devices.allocator.release_free_memory`), and for a sweep's evaluations: Wanda points at 64 x 512 (walk
#: and evaluation in one process) on the TinyLlama-1.1B and Llama-3.2-3B shapes peaked 1.15x and 1.10x their
#: working sets (3.97 and 9.00 GB; 1.8x and 2.0x before the release).
WALK_HEAP_OVERHEAD_BF16_WEIGHTS = 1.15
#: Working bytes per weight of the largest matrix while its mask is chosen (fp32 scores, int64 indices of the
#: selection, a fp32 source copy of a low-precision weight): one matrix at a time.
MASK_SCRATCH_BYTES_PER_WEIGHT = 16

Speed = Union[None, float, Mapping]


def shape_facts(model_info: dict) -> dict:
    """Sizes an estimate needs from `LoadedModel.describe()`: layers, hidden, parameters, prunable, head (the LM
    head's weights, vocabulary x hidden), vocab, kinds, per_layer (prunable parameters per layer), input_widths (distinct linear
    input widths per layer), memory (bytes of the weights)."""
    layers = int(model_info["layers"])
    hidden = int(model_info.get("hidden_size") or 0)
    params = int(model_info["parameters"])
    prunable = int(model_info["prunable_parameters"])
    rest = max(params - prunable, 1)  # embeddings, LM head (its own or tied), norms
    # The head's matmul: vocabulary x hidden. The embedding lookup costs nothing, so an untied model's embedding
    # is not counted (counting all the rest made TinyLlama's head twice its share of a forward).
    vocab = int(model_info.get("vocab_size") or 0) or max(rest // max(hidden, 1), 1)
    head = min(rest, vocab * hidden) if hidden else rest
    kinds = list(model_info.get("module_kinds") or [])
    per_layer = prunable / max(layers, 1)
    # Distinct linear inputs per layer (Llama: attention input, o input, MLP input, down input): their widths
    # set the Hessian cost. The widest is read from the weights (`describe()["widest_input"]`); without it, from
    # the parameter count as if every attention matrix were hidden x hidden, which grouped-query attention is not
    # (TinyLlama-1.1B: 4,437 instead of 5,632, and its structured run's compensation, cubic in it, took 1.6x the
    # estimate).
    inner = max((per_layer - 4 * hidden * hidden) / (3 * max(hidden, 1)), hidden) if hidden else 0
    inner = int(model_info.get("widest_input") or 0) or inner
    input_widths = [hidden, hidden, hidden, inner]
    return {"layers": layers, "hidden": hidden, "params": params, "prunable": prunable, "head": head,
            "vocab": vocab, "kinds": kinds, "per_layer": per_layer, "input_widths": input_widths,
            "matrices": layers * max(len(kinds), 1), "memory": int(model_info.get("memory_bytes") or params * 4)}


def bytes_per_weight(facts: dict) -> float:
    """Bytes one weight takes in the loaded model (4 in fp32, 2 in bf16): its memory over its parameters."""
    return facts["memory"] / max(facts["params"], 1)


def low_precision_weights(facts: dict) -> bool:
    """Whether the model's weights are stored in 16 bits (bf16, fp16): their layers compute and pass 16-bit states
    (`walk.carried_dtype`), run fp32 solver math at the slower fp32 rate beside them, and leave more of the heap
    resident (`resident_bytes`)."""
    return bytes_per_weight(facts) <= 2


def activation_bytes(facts: dict) -> int:
    """Bytes of one activation value in a walk or forward: 2 for bf16-stored weights (their layers compute and pass
    bf16 states, `walk.carried_dtype`), else 4."""
    return 2 if low_precision_weights(facts) else 4


def largest_matrix(facts: dict) -> int:
    """Weights of the widest matrix of a Llama-like layer (an MLP projection: hidden x the widest input)."""
    return int(facts["hidden"] * max(facts["input_widths"]))


def saved_activation_bytes(facts: dict, tokens: int, value: int) -> int:
    """The activations autograd saves for a backward pass over `tokens` tokens (bytes): ~10 hidden-wide and 4
    MLP-wide values per token and layer, `value` bytes each."""
    return int(facts["layers"] * int(tokens) * (10 * facts["hidden"] + 4 * max(facts["input_widths"])) * value)


def logits_bytes(facts: dict, tokens: int) -> int:
    """`tokens` tokens' logits with their softmax and its gradient (fp32, three vocabulary-wide values each)."""
    return int(3 * int(tokens) * facts["vocab"] * 4)


def restore_copy_bytes(facts: dict) -> int:
    """One decoder layer's prunable weights, in the model's dtype: the walk copies a layer's weights before its
    handler writes into them and puts them back after the layer's outputs are recomputed
    (`walk_layers(restore_each_layer=True)`), and an evaluation applies each mask only during its module's own
    forward (`masks.masks_applied_per_forward`), so no copy of the whole model is held."""
    return int(facts["per_layer"] * bytes_per_weight(facts))


def mask_bytes(facts: dict) -> int:
    """A pruning result's keep masks (`PruneResult.masks`): every prunable weight's bit, held packed 8 to a byte
    (`packed_masks.PackedMasks`; unpacked one module at a time when read)."""
    return int(facts["prunable"]) // 8


def updated_weights_bytes(facts: dict) -> int:
    """SparseGPT's updated weights (`PruneResult.weights`): every prunable weight, in the model's dtype."""
    return int(facts["prunable"] * bytes_per_weight(facts))


def statistics_bytes(facts: dict, need: str, layers: int = 1) -> int:
    """The walk's statistics of `layers` layers (fp32): per distinct linear input, the running ||X_j||^2 and its
    count (8 bytes per input column) for "act_sq", the Hessian X X^T (width x width) for "hessian"; "none": 0.
    In pruned propagation one layer's statistics live at a time (freed after the layer); dense propagation keeps
    every layer's for the settings pruned from them."""
    if need == "none":
        return 0
    per_layer = sum(8 * w for w in facts["input_widths"])
    if need == "hessian":
        per_layer += sum(4 * w * w for w in facts["input_widths"])
    return int(per_layer * max(int(layers), 1))


def walk_working_bytes(facts: dict, nsamples: int, seqlen: int, batch: int, need: str,
                       all_layers: bool = False) -> int:
    """The layer walk's working set beside the weights (bytes): the hidden states of every calibration window
    entering and leaving one layer (two buffers of tokens x hidden, `walk.LayerInputs`, in `walk.carried_dtype`:
    fp32, bf16 for bf16-stored weights), one batch's activations inside a layer (~12 tensors of seqlen x the
    widest input, in the weights' dtype), the statistics (`statistics_bytes`, of one layer or, `all_layers`, of
    every layer) and one matrix's mask selection scratch."""
    if need == "none":
        return int(MASK_SCRATCH_BYTES_PER_WEIGHT * facts["per_layer"] / max(len(facts["kinds"]), 1))
    tokens = int(nsamples) * int(seqlen)
    value = activation_bytes(facts)
    buffers = 2 * tokens * facts["hidden"] * value
    inside = 12 * int(batch) * int(seqlen) * max(facts["input_widths"]) * value
    return int(buffers + inside + statistics_bytes(facts, need, facts["layers"] if all_layers else 1)
               + MASK_SCRATCH_BYTES_PER_WEIGHT * largest_matrix(facts))


def pruning_peak_bytes(facts: dict, protocol, method: str, propagation: str) -> int:
    """Peak resident bytes of pruning the model once with `method` and evaluating it (`prune.prune_model`, then
    `applied_masks`): the process's runtime (`RUNTIME_BYTES`), the weights in their dtype, one layer's restore
    copy (`restore_copy_bytes`), the keep masks (`mask_bytes`: bit-packed), SparseGPT's updated weights
    (`updated_weights_bytes`), and the walk's working set (`walk_working_bytes`: every layer's statistics in dense propagation).
    protocol: a `protocol.Protocol` (nsamples, seqlen, batch_size)."""
    from pruning_core.methods import get_method

    spec = get_method(method)
    peak = RUNTIME_BYTES + facts["memory"] + restore_copy_bytes(facts) + mask_bytes(facts)
    if spec.updates_weights:
        peak += updated_weights_bytes(facts)
    peak += walk_working_bytes(facts, protocol.nsamples, protocol.seqlen, protocol.batch_size, spec.needs,
                               all_layers=propagation == "dense")
    return resident_bytes(peak, facts, WALK_HEAP_OVERHEAD_BF16_WEIGHTS)


def resident_bytes(live_bytes: float, facts: dict, heap_overhead: float = HEAP_OVERHEAD_BF16_WEIGHTS) -> int:
    """The resident memory a process reaches when `live_bytes` (the runtime and the weights included) are alive at
    once: for bf16-stored weights, the working set above the runtime and the weights times `heap_overhead`
    (`WALK_HEAP_OVERHEAD_BF16_WEIGHTS` for the layer walk, which releases the heap's free pages per layer)."""
    if not low_precision_weights(facts):
        return int(live_bytes)
    base = RUNTIME_BYTES + facts["memory"]
    return int(base + max(live_bytes - base, 0) * heap_overhead)


def rates(facts: dict, speed: Speed) -> dict:
    """Seconds per token of one decoder layer, of the head and of a full forward; the sustained FLOP/s; the fixed
    seconds of one forward call (`call_s`). speed: tokens/s, or {"tokens_per_s", "call_seconds"}, or None."""
    call = 0.0
    throughput = speed
    matmul = None
    if isinstance(speed, Mapping):
        throughput, call = speed.get("tokens_per_s"), float(speed.get("call_seconds") or 0.0)
        matmul = speed.get("fp32_matmul_flops")
    flops_per_token = 2.0 * (facts["prunable"] + facts["head"])
    measured = throughput is not None and float(throughput) > 0
    throughput = float(throughput) if measured else DEFAULT_FLOPS / flops_per_token
    full = 1.0 / throughput                                        # s per token of a full forward
    body_share = facts["prunable"] / (facts["prunable"] + facts["head"])
    flops = throughput * flops_per_token
    # Statistics and solver math (Hessians, SparseGPT, reconstruction) run in fp32 whatever the weights: a bf16
    # model's forward rate is that of bf16 matmuls, so their rate is taken a third of it.
    fp32_flops = flops * (FP32_OVER_BF16_MATMUL if low_precision_weights(facts) else 1.0)
    return {"layer_s_per_token": full * body_share / max(facts["layers"], 1),
            "head_s_per_token": full * (1 - body_share), "full_s_per_token": full,
            "flops": flops, "fp32_flops": fp32_flops, "throughput": throughput, "measured": measured,
            # The measured rate of large fp32 products (`estimates.fp32_matmul_flops`), when the speed has it.
            "fp32_matmul_flops": float(matmul) if matmul else None,
            "call_s": call, "layer_call_s": call / (facts["layers"] + 1)}


def hessian_seconds(facts: dict, rates_: dict, tokens: int) -> float:
    """The X X^T of every distinct linear input over `tokens` calibration tokens, all layers."""
    return sum(2.0 * w * w for w in facts["input_widths"]) * tokens * facts["layers"] / rates_["fp32_flops"]


def mask_seconds(facts: dict, rates_: dict, method: str, ranked: bool = False) -> float:
    """Time to build the masks of every prunable matrix once with `method`; ranked: magnitude/Wanda re-threshold
    ranks computed for an earlier sparsity of the same sweep (one comparison per weight)."""
    fixed = facts["matrices"] * MATRIX_CALL_S
    if method != "sparsegpt":
        return fixed + facts["prunable"] * (RETHRESHOLD_SECONDS_PER_WEIGHT if ranked else MASK_SECONDS_PER_WEIGHT)
    hidden, inner = facts["hidden"], facts["input_widths"][-1]
    # Llama-like split: 4 matrices reading width `hidden` (q, k, v, gate/up share) and down reading `inner`.
    rows_hidden = (facts["per_layer"] - hidden * inner) / max(hidden, 1)  # total out rows reading `hidden`
    per_layer_flops = 2.0 * rows_hidden * hidden * hidden + 2.0 * hidden * inner * inner
    matrices = max(len(facts["kinds"]), 1)
    per_layer_flops += (matrices - 1) * hidden ** 3 + inner ** 3       # Cholesky / inverse per matrix
    columns = (matrices - 1) * hidden + inner
    return fixed + facts["layers"] * (per_layer_flops / rates_["fp32_flops"] + columns * SPARSEGPT_COLUMN_OVERHEAD_S)


def forward_seconds(rates_: dict, windows: int, seqlen: int, batch: int = EVAL_BATCH) -> float:
    """Full forwards of `windows` windows of `seqlen` tokens, `batch` windows per call."""
    windows = max(int(windows), 0)
    return windows * int(seqlen) * rates_["full_s_per_token"] + math.ceil(windows / max(int(batch), 1)) * rates_["call_s"]


def evaluation_seconds(rates_: dict, windows: Mapping[str, int], seqlen: int) -> float:
    """Perplexity of one model on each corpus: {corpus: windows really used}."""
    return sum(forward_seconds(rates_, w, seqlen) for w in windows.values())


def walk_seconds(facts: dict, rates_: dict, nsamples: int, seqlen: int, batch: int, need: str,
                 passes: int = 1, calib_dtype: str = "float32") -> float:
    """A layer walk over the calibration windows: `passes` forwards per layer (statistics; 2 in pruned
    propagation: statistics, then the pruned outputs), plus the Hessians when `need` is "hessian"; "none"
    costs nothing. calib_dtype "bfloat16" on fp32 weights (Wanda's default in pruned propagation): the forwards
    run under bf16 autocast, at bf16's matmul rate where the CPU has it (measured fp32 rate / FP32_OVER_BF16)."""
    if need == "none":
        return 0.0
    tokens = int(nsamples) * int(seqlen)
    calls = math.ceil(int(nsamples) / max(int(batch), 1)) * facts["layers"] * passes
    layer_s = rates_["layer_s_per_token"]
    if calib_dtype == "bfloat16" and not low_precision_weights(facts):
        from pruning_core.devices.placement import cpu_has_native_bf16

        layer_s *= FP32_OVER_BF16_MATMUL if cpu_has_native_bf16() else BF16_CPU_SLOWDOWN
    seconds = passes * tokens * facts["layers"] * layer_s + calls * rates_["layer_call_s"]
    # The statistics pass's hooks: every input value of every distinct linear input, cast and squared and summed.
    seconds += tokens * facts["layers"] * sum(facts["input_widths"]) * STATISTICS_SECONDS_PER_VALUE
    return seconds + (hessian_seconds(facts, rates_, tokens) if need == "hessian" else 0.0)


def load_seconds(facts: dict) -> float:
    """Loading the model from its converted cache (a first conversion from GGUF takes longer: not counted)."""
    return LOAD_FIXED_S + facts["memory"] / LOAD_BYTES_PER_S


def decode_step_seconds(facts: dict, rates_: dict, batch: int = 1) -> float:
    """One generated token for `batch` sequences: the larger of reading every weight once and computing
    `batch` tokens, plus one call's fixed cost."""
    return max(facts["memory"] / DECODE_BYTES_PER_S, int(batch) * rates_["full_s_per_token"]) + rates_["call_s"]


def generation_seconds(facts: dict, rates_: dict, prompts: int, new_tokens: int, models: int = 2,
                       prompt_tokens: int = 16) -> float:
    """Sample texts: each of `prompts` prompts through `models` models (dense and pruned), `new_tokens` each."""
    if int(prompts) <= 0 or int(new_tokens) <= 0:
        return 0.0
    one = forward_seconds(rates_, 1, prompt_tokens, 1) + int(new_tokens) * decode_step_seconds(facts, rates_)
    return int(prompts) * int(models) * one


def speed_timing_seconds(facts: dict, rates_: dict, settings: Mapping, models: int = 2) -> float:
    """A dense-against-pruned speed timing (`structured.speed.measure_speed`) with `settings` (`SpeedConfig`
    fields; its defaults where absent): per dtype a warm-up and `repeats` timed runs of each phase per model."""
    prefill = int(settings.get("prefill_tokens", 512))
    decode = int(settings.get("decode_tokens", 32))
    batches = tuple(settings.get("decode_batches", (1, 8)))
    prompt = int(settings.get("prompt_tokens", 16))
    dtypes = settings.get("dtypes", ("float32", "bfloat16"))
    dtypes = (dtypes,) if isinstance(dtypes, str) else tuple(dtypes)
    repeats = int(settings.get("repeats", 3))
    total = 0.0
    for dtype in dtypes:
        slow = 1.0 if dtype == "float32" else BF16_CPU_SLOWDOWN
        run = forward_seconds(rates_, 1, prefill, 1) + sum(
            forward_seconds(rates_, b, prompt, b) + decode * decode_step_seconds(facts, rates_, b) for b in batches)
        warm = forward_seconds(rates_, 1, 8, 1) + forward_seconds(rates_, 1, prompt, 1)
        total += slow * models * (repeats * run + warm)
        if dtype != "float32":
            total += models * facts["memory"] / SAVE_BYTES_PER_S  # the cast copies of both models
    return total


def save_seconds(nbytes: float) -> float:
    """Writing `nbytes` (a model's or masks' files)."""
    return float(nbytes) / SAVE_BYTES_PER_S


def speed_words(rates_: dict) -> str:
    """The measurement an estimate rests on, for its assumptions."""
    if not rates_["measured"]:
        return f"no measured speed; assumed {DEFAULT_FLOPS / 1e9:.0f} GFLOP/s"
    words = f"measured throughput {rates_['throughput']:.0f} tokens/s"
    if rates_["call_s"]:
        words += f" and {rates_['call_s'] * 1e3:.1f} ms per forward call"
    return words


def phase_estimate(breakdown: Mapping[str, float], peak_memory_bytes: int, what: str, rates_: dict,
                   first_view_seconds: Optional[float] = None) -> dict:
    """The one shape every run estimate has: {"seconds" (the sum of the phases), "peak_memory_bytes",
    "breakdown" {phase: seconds}, "assumptions" (what was counted, in words)} (+ "first_view_seconds")."""
    out = {"seconds": float(sum(breakdown.values())), "peak_memory_bytes": int(peak_memory_bytes),
           "breakdown": {k: float(v) for k, v in breakdown.items()},
           "assumptions": f"{what}; {speed_words(rates_)}; forward time split between decoder layers and head by "
                          "parameter count; memory = the Python runtime + weights + the copy that restores them + "
                          "activations + statistics + masks"}
    if first_view_seconds is not None:
        out["first_view_seconds"] = float(first_view_seconds)
    return out


def prune_seconds(facts: dict, rates_: dict, method: str, propagation: str, protocol,
                  calib_dtype: Optional[str] = None) -> float:
    """Pruning the model once with `method` (`prune.prune_model`): in "pruned" propagation a walk with two
    forwards per layer (statistics, then the pruned outputs) and the masks; in "dense" propagation the statistics
    walk once, then the masks. protocol: a `protocol.Protocol` (nsamples, seqlen, batch_size); calib_dtype: the
    walk's compute dtype (None: `prune.default_calib_dtype`, what a `PruneConfig` left unset runs with)."""
    from pruning_core.methods import get_method
    from pruning_core.prune import default_calib_dtype

    needs = get_method(method).needs
    passes = 2 if propagation == "pruned" else 1
    dtype = calib_dtype or default_calib_dtype(propagation, method)
    return mask_seconds(facts, rates_, method) + walk_seconds(facts, rates_, protocol.nsamples, protocol.seqlen,
                                                              protocol.batch_size, needs, passes=passes,
                                                              calib_dtype=dtype)


def capped_windows(windows: Mapping[str, int], asked: int) -> dict[str, int]:
    """{corpus: min(asked, windows the split holds)}: the windows perplexity really evaluates."""
    return {corpus: min(int(asked), int(held)) for corpus, held in windows.items()}

"""How long a recovery's training will take, before the user commits: steps x seconds per step, an estimate.

The seconds per step come from a measurement, best first:
1. a finished recovery of the same model on this machine: its training time (evaluations excluded) per trained
   token, times the tokens of one step of the new run (windows per step x tokens per window);
2. else this machine's full-forward throughput of the model (`analysis.estimates.measure_throughput`, cached):
   a masked-LoRA step costs about three forwards per token (the forward, then a backward that computes the
   activation gradients and the masked weight-delta gradient, each about one forward's matmuls).
The training stops at `max_seconds` when the spec sets one, so the training's share never exceeds it.

`estimate_recovery` is the whole run as the page shows it: every phase `run.run_recovery` goes through (load,
dense perplexities, per step-wise stage the pruning and the pruned model's evaluation, the training with its
quick evaluations for the curve, the merge, the recovered model's evaluation, the sample text, the adapter's
files), in `run_costs` units. Counting training alone said 3 min for a run that took 7.
"""

from __future__ import annotations

from typing import Mapping, Optional

from pruning_core import run_costs

#: Forward passes' worth of matmuls per trained token of a masked-LoRA step (see the module docstring).
FORWARDS_PER_TRAINED_TOKEN = 3.0


def measured_seconds_per_token(result: dict) -> Optional[float]:
    """Training seconds per trained token of a finished `run_recovery` result, or None when it trained nothing."""
    train = (result.get("spec") or {}).get("train") or {}
    stages = result.get("stages") or [{"history": result.get("history") or {}}]
    steps = sum(int((s.get("history") or {}).get("steps_done") or 0) for s in stages)
    seconds = result.get("train_seconds")
    if not steps or not seconds or not train.get("batch_size") or not train.get("seqlen"):
        return None
    return float(seconds) / (steps * int(train["batch_size"]) * int(train["seqlen"]))


def estimate_training(steps: int, batch_size: int, seqlen: int, *, measured: Optional[dict] = None,
                      forward_tokens_per_s: Optional[float] = None, max_seconds: Optional[float] = None) -> dict:
    """{"seconds", "seconds_per_step", "basis" ("measured" | "throughput"), "capped" (the time budget is the
    shorter), "assumptions" (a sentence)}.

    measured: a finished recovery result of the same model (its training speed per token is used first);
    forward_tokens_per_s: the model's measured forward throughput on this machine. One of the two is needed.
    """
    tokens_per_step = int(batch_size) * int(seqlen)
    per_token = measured_seconds_per_token(measured) if measured else None
    if per_token is not None:
        basis = "measured"
        assumptions = (f"{per_token * 1e3:.3f} ms per trained token, measured in the last recovery of this model "
                       "on this machine")
    elif forward_tokens_per_s:
        basis = "throughput"
        per_token = FORWARDS_PER_TRAINED_TOKEN / float(forward_tokens_per_s)
        assumptions = (f"this machine's forward speed ({float(forward_tokens_per_s):,.0f} tokens/s) x "
                       f"{FORWARDS_PER_TRAINED_TOKEN:g} forwards per trained token (forward + backward)")
    else:
        raise ValueError("estimate_training needs a measured recovery or the model's measured throughput")
    per_step = per_token * tokens_per_step
    seconds = per_step * int(steps)
    capped = max_seconds is not None and seconds > float(max_seconds)
    return {"seconds": float(max_seconds) if capped else seconds, "seconds_per_step": per_step, "basis": basis,
            "capped": capped, "assumptions": f"{assumptions}; {tokens_per_step:,} tokens per step. Evaluations "
                                             "before and after training are not counted."}


#: Working bytes per weight of the one module whose effective weight is being built or differentiated
#: (`masked_lora._MaskedLoraMatmul`): the weight W + masked delta and its cast, the rank-r product, the unpacked
#: keep pattern, and in backward the weight's gradient and its masked copy.
EFFECTIVE_WEIGHT_SCRATCH_BYTES = 16


def training_bytes(facts: dict, batch_size: int, seqlen: int, dtype: str = "bfloat16") -> int:
    """What one masked-LoRA training step holds beside the weights (bytes): the adapted modules' keep patterns
    (bit-packed, an eighth of a byte per weight), one module's effective weight W + mask * BA at a time with its
    scratch (`EFFECTIVE_WEIGHT_SCRATCH_BYTES` per weight of the largest matrix: the backward rebuilds each
    module's weight instead of keeping it from the forward), the activations autograd saves for a batch (~10
    hidden-wide and 4 MLP-wide values per token and layer, 2 bytes under bf16 autocast, else 4) and the batch's
    logits with their softmax and gradient (fp32). dtype: the training's compute dtype.
    Before the backward rebuilt the weights, autograd kept every module's effective weight (and its bf16 cast for
    fp32 weights) for the whole step: 3.64 GB (embedded, fp32), 6.22 GB (SmolLM2-360M shape, bf16), 14.1 GB
    (TinyLlama-1.1B shape, bf16) at 4 x 256 tokens per step."""
    tokens = int(batch_size) * int(seqlen)
    autocast = dtype == "bfloat16"
    keep = run_costs.mask_bytes(facts)
    effective = run_costs.largest_matrix(facts) * EFFECTIVE_WEIGHT_SCRATCH_BYTES
    activations = run_costs.saved_activation_bytes(facts, tokens, 2 if autocast else 4)
    return int(keep + effective + activations + run_costs.logits_bytes(facts, tokens))


def recovery_peak_bytes(facts: dict, spec) -> int:
    """Peak resident bytes of a recovery (`run.run_recovery`): the dense model and the pruned copy the adapter
    trains on, with the larger of the pruning's working set (`run_costs.pruning_peak_bytes` beyond its weights;
    none when the masks come from a folder) and a training step's (`training_bytes`, with the heap's overhead of
    gradient passes for bf16 weights, `run_costs.HEAP_OVERHEAD_BF16_WEIGHTS`)."""
    config = spec.train_config()
    base = run_costs.RUNTIME_BYTES + 2 * facts["memory"]
    pruning = 0
    if not (spec.mask_dir or spec.structured_dir):
        pruning = run_costs.pruning_peak_bytes(facts, spec.protocol, spec.setting.method,
                                               spec.setting.propagation or "pruned") - run_costs.RUNTIME_BYTES \
            - facts["memory"]
    training = run_costs.resident_bytes(run_costs.RUNTIME_BYTES + facts["memory"]
                                        + training_bytes(facts, config.batch_size, config.seqlen, config.dtype),
                                        facts) \
        - run_costs.RUNTIME_BYTES - facts["memory"]
    return int(base + max(pruning, training))


def estimate_recovery(model_info: dict, spec, speed: run_costs.Speed, windows: Mapping[str, int], *,
                      measured: Optional[dict] = None, dense_stored: bool = False, stored: bool = False) -> dict:
    """{"seconds", "peak_memory_bytes", "breakdown", "assumptions", "steps", "seconds_per_step", "capped", "basis"} of
    `spec` (a `run.RecoverySpec`). windows: {corpus: whole windows of its evaluation split}; measured: the last
    finished recovery of the model (its training speed per token, `estimate_training`); stored: the store holds
    this very recovery (the run reads it back: only the load)."""
    facts = run_costs.shape_facts(model_info)
    rates = run_costs.rates(facts, speed)
    config = spec.train_config()
    protocol = spec.protocol
    corpora = list(spec.eval_corpora) or [spec.train_corpus]
    used = run_costs.capped_windows({c: windows.get(c, protocol.eval_windows) for c in corpora},
                                    protocol.eval_windows)
    training = estimate_training(config.steps, config.batch_size, config.seqlen, measured=measured,
                                 forward_tokens_per_s=rates["throughput"], max_seconds=config.max_seconds)
    if stored:
        breakdown = {"load": run_costs.load_seconds(facts)}
        what = "this recovery is in the store: it is read back"
    else:
        stages = len(spec.schedule) + 1
        evaluation = run_costs.evaluation_seconds(rates, used, protocol.seqlen)
        curve = {c: min(int(spec.curve_windows), w) for c, w in used.items()}
        quick = (config.steps // config.eval_every + 1) if int(config.eval_every) > 0 else 0
        pruning = 0.0 if (spec.mask_dir or spec.structured_dir) else stages * run_costs.prune_seconds(
            facts, rates, spec.setting.method, spec.setting.propagation or "pruned", protocol)
        breakdown = {"load": run_costs.load_seconds(facts),
                     "dense_evaluation": 0.0 if dense_stored else evaluation,
                     "pruning": pruning,
                     "evaluation_before": stages * evaluation,
                     # + each step's fixed calls (forward, backward, optimizer) beside its tokens, unless the
                     # per-token speed already comes from a measured recovery, which holds them
                     "training": training["seconds"] + (0.0 if training["basis"] == "measured" or training["capped"]
                                                        else config.steps * 3 * rates["call_s"]),
                     "curve_evaluations": quick * run_costs.evaluation_seconds(rates, curve, protocol.seqlen),
                     "merge": stages * facts["prunable"] * run_costs.MASK_SECONDS_PER_WEIGHT,
                     "evaluation_after": evaluation,
                     "samples": run_costs.generation_seconds(facts, rates, 1, int(spec.max_new_tokens)),
                     "saving": run_costs.save_seconds(facts["prunable"] * 4 * 0.05)}  # adapter files, a few % of it
        what = (f"{config.steps:,} training steps x {training['seconds_per_step']:.2f} s ({training['basis']}"
                + ("; the time budget stops it" if training["capped"] else "") + f"), {stages} pruning stage(s), "
                f"evaluations on {', '.join(f'{c} {w} windows' for c, w in used.items())} before and after, "
                f"{quick} quick evaluations for the curve; {training['assumptions']}")
    out = run_costs.phase_estimate(breakdown, recovery_peak_bytes(facts, spec), what, rates)
    return {**out, "steps": int(config.steps), "seconds_per_step": training["seconds_per_step"],
            "capped": training["capped"], "basis": training["basis"]}

"""How long a recovery's training will take, before the user commits: steps x seconds per step, an estimate.

The seconds per step come from a measurement, best first:
1. a finished recovery of the same model on this machine: its training time (evaluations excluded) per trained
   token, times the tokens of one step of the new run (windows per step x tokens per window);
2. else this machine's full-forward throughput of the model (`analysis.estimates.measure_throughput`, cached):
   a masked-LoRA step costs about three forwards per token (the forward, then a backward that computes the
   activation gradients and the masked weight-delta gradient, each about one forward's matmuls).
The training stops at `max_seconds` when the spec sets one, so the estimate never exceeds it. Evaluations before
and after training and the merge are not counted (they are a few full evaluations of the model).
"""

from __future__ import annotations

from typing import Optional

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

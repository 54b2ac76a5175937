"""Is a faster calibration dtype faithful? Its perplexity change against the spread fp32 arithmetic itself leaves.

SparseGPT's result is chaotic in floating-point rounding: a change of summation order (a different batch size in
the layer walk, a re-ordered OBS update) flips a few mask entries in one layer, the pruned propagation carries
the difference on, and by the last layer ~1 % of the masks differ. Its perplexity then moves by about as much as a
change of compute dtype does. So a dtype is judged here against that floor, not against a fixed fraction:

- per calibration seed, four runs of the same setting (embedded model, 50 %, pruned propagation, wiki
  calibration): fp32 with the default batch size (the reference), fp32 with another batch size (the same
  arithmetic in a different order: the noise floor) and bf16 calibration forwards;
- each run's perplexity on the first evaluation windows of wiki (our evaluation, fp32);
- per dtype, the relative change against the reference of the same seed, its mean over seeds, and the mean
  absolute change of the fp32 re-ordering over seeds (the floor); `within_floor` says whether the dtype's mean
  absolute change is at most the floor's.

Prune seconds are recorded too (each run alone on the machine; compare them within this run only).

    python benchmarks/calib_dtype_fidelity.py [--method sparsegpt] [--seeds 0,1,2] [--quick] [--save]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.first_map import cpu_facts  # noqa: E402
from pruning_core import evaluate  # noqa: E402
from pruning_core.models import load_model  # noqa: E402
from pruning_core.protocol import Protocol, calibration_ids, evaluation_ids  # noqa: E402
from pruning_core.prune import PruneConfig, prune_model  # noqa: E402

#: (label, calibration dtype, walk batch size); the first is the reference, the second the fp32 noise floor.
ARMS = (("float32", "float32", 8), ("float32_batch4", "float32", 4), ("bfloat16", "bfloat16", 8))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_arm(loaded, protocol: Protocol, evals, method: str, dtype: str, batch_size: int) -> dict:
    """One pruned-propagation point at 50 %: prune seconds and wiki perplexity."""
    config = PruneConfig(method, "unstructured", 0.5, "pruned", calib_dtype=dtype)
    calib = calibration_ids(loaded, protocol)
    start = time.perf_counter()
    result = prune_model(loaded, calib, config, batch_size)
    seconds = time.perf_counter() - start
    ppl = evaluate.evaluate_setting(loaded, protocol, ["wiki"], result, dense=False,
                                    eval_ids={"wiki": evals}).pruned_ppl["wiki"]
    return {"prune_seconds": round(seconds, 2), "ppl": round(ppl, 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="sparsegpt")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quick", action="store_true", help="8 x 128 calibration, 4 evaluation windows")
    parser.add_argument("--save", action="store_true", help="write docs/runs/calib-dtype-fidelity.json")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    seeds = [int(s) for s in args.seeds.split(",")]
    base = (Protocol(calib="wiki", nsamples=8, seqlen=128, eval_windows=4) if args.quick
            else Protocol(calib="wiki", nsamples=64, seqlen=512, eval_windows=16))
    loaded = load_model("embedded")
    evals = evaluation_ids(loaded, "wiki", base)
    runs: dict = {}
    for seed in seeds:
        protocol = Protocol(**{**base.to_dict(), "seed": seed})
        for label, dtype, batch_size in ARMS:
            runs.setdefault(label, {})[str(seed)] = run_arm(loaded, protocol, evals, args.method, dtype, batch_size)
            log(f"seed {seed} {label}: {runs[label][str(seed)]}")
    reference = runs[ARMS[0][0]]
    summary = {}
    for label, _, _ in ARMS[1:]:
        changes = [runs[label][str(s)]["ppl"] / reference[str(s)]["ppl"] - 1 for s in seeds]
        summary[label] = {"relative_change_per_seed": [round(c, 5) for c in changes],
                          "mean_relative_change": round(sum(changes) / len(changes), 5),
                          "mean_absolute_change": round(sum(abs(c) for c in changes) / len(changes), 5),
                          "mean_prune_seconds": round(sum(runs[label][str(s)]["prune_seconds"] for s in seeds)
                                                      / len(seeds), 2)}
    floor = summary[ARMS[1][0]]["mean_absolute_change"]
    for label, _, _ in ARMS[2:]:
        summary[label]["within_floor"] = summary[label]["mean_absolute_change"] <= floor
    summary[ARMS[0][0]] = {"mean_prune_seconds": round(sum(r["prune_seconds"] for r in reference.values())
                                                      / len(seeds), 2)}
    report = {"machine": cpu_facts(), "method": args.method, "sparsity": 0.5, "propagation": "pruned",
              "protocol": base.to_dict(), "seeds": seeds,
              "arms": {label: {"calib_dtype": dtype, "batch_size": bs} for label, dtype, bs in ARMS},
              "runs": runs, "noise_floor_mean_absolute_change": floor, "summary": summary}
    text = json.dumps(report, indent=2)
    print(text)
    if args.save:
        path = ROOT / "docs" / "runs" / ("calib-dtype-fidelity-quick.json" if args.quick
                                        else "calib-dtype-fidelity.json")
        path.write_text(text + "\n")
        log(f"saved {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

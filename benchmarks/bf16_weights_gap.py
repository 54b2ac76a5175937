"""What bf16 weight storage costs in perplexity: the embedded model stored in fp32 against "embedded@bfloat16".

For each storage, the sweep's own path (`run_sweep`, no store) measures the dense perplexity and a Wanda 50 %
point in pruned propagation (default 64 x 512 wiki calibration, 8 evaluation windows of 512 wiki tokens).
fp32 storage is measured twice: with fp32 evaluation (the reference numbers) and with bf16 autocast evaluation,
which bf16 storage implies, so the gap splits into what the bf16 compute costs and what the bf16 weights add.
Prints one JSON document; --save writes docs/runs/bf16-weights-gap.json.

    nice -n 19 python benchmarks/bf16_weights_gap.py --save
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pruning_core.analysis.sweep import SweepSpec, run_sweep  # noqa: E402
from pruning_core.protocol import Protocol  # noqa: E402


def measure(model: str, eval_dtype: str, nsamples: int, seqlen: int, windows: int) -> dict:
    spec = SweepSpec(model=model, methods=("wanda",), sparsities=(0.5,), eval_corpora=("wiki",),
                     protocol=Protocol(nsamples=nsamples, seqlen=seqlen, eval_windows=windows, dtype=eval_dtype))
    start = time.perf_counter()
    result = run_sweep(spec)
    point = result["points"][0]
    return {"model": model, "weights_dtype": result["model"]["dtype"], "eval_dtype": eval_dtype,
            "calib_dtype": point.get("calib_dtype", "bfloat16 (Wanda's default in pruned propagation)"),
            "memory_bytes": result["model"]["memory_bytes"], "dense_ppl": result["dense"]["ppl"]["wiki"],
            "wanda50_ppl": point["ppl"]["wiki"], "wanda50_sparsity": point["sparsity"],
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--save", action="store_true", help="write docs/runs/bf16-weights-gap.json")
    args = parser.parse_args()
    os.environ.setdefault("PRUNESCOPE_HOME", tempfile.mkdtemp(prefix="bf16-gap-"))
    reference = measure("embedded", "float32", args.nsamples, args.seqlen, args.windows)
    bf16_compute = measure("embedded", "bfloat16", args.nsamples, args.seqlen, args.windows)
    bf16_storage = measure("embedded@bfloat16", "bfloat16", args.nsamples, args.seqlen, args.windows)

    def gap(run: dict, key: str) -> float:
        return run[key] / reference[key] - 1.0

    doc = {
        "what": "perplexity of the embedded model with bf16 weight storage against fp32 storage (sweep path)",
        "protocol": {"calibration": f"{args.nsamples} x {args.seqlen} wiki", "evaluation": f"{args.windows} x "
                     f"{args.seqlen} wiki", "point": "wanda 50 % unstructured, pruned propagation"},
        "runs": {"fp32_weights_fp32_eval": reference, "fp32_weights_bf16_eval": bf16_compute,
                 "bf16_weights": bf16_storage},
        "relative_gap": {
            "dense": {"bf16_weights": gap(bf16_storage, "dense_ppl"), "bf16_eval_only": gap(bf16_compute, "dense_ppl")},
            "wanda50": {"bf16_weights": gap(bf16_storage, "wanda50_ppl"),
                        "bf16_eval_only": gap(bf16_compute, "wanda50_ppl")},
        },
        "memory_ratio": bf16_storage["memory_bytes"] / reference["memory_bytes"],
        "machine": {"cpu_count": os.cpu_count(), "load_average": os.getloadavg()},
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if args.save:
        (ROOT / "docs" / "runs" / "bf16-weights-gap.json").write_text(text + "\n")


if __name__ == "__main__":
    main()

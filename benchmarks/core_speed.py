"""Core speed benchmark on the embedded model; prints one JSON document.

Measures: model load time (first = GGUF conversion into an empty cache, then cached), layer-0 input capture
time, prune time per method at 50 % (pruned propagation, the papers' protocol), evaluation throughput in
tokens/s in fp32 and bf16 (with the perplexity gap between them, dense and Wanda-pruned), and peak memory.

    python benchmarks/core_speed.py [--nsamples 64 --seqlen 512 --eval-windows 16] [--skip-first-load]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pruning_core.metrics import perplexity  # noqa: E402
from pruning_core.models import load_model  # noqa: E402
from pruning_core.protocol import Protocol, calibration_ids, evaluation_ids  # noqa: E402
from pruning_core.prune import PruneConfig, prune_model  # noqa: E402
from pruning_core.walk import capture_layer_inputs  # noqa: E402


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    parser.add_argument("--skip-first-load", action="store_true", help="do not time the GGUF conversion")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out: dict = {"torch_threads": torch.get_num_threads(), "protocol": vars(args)}

    if not args.skip_first_load:
        with tempfile.TemporaryDirectory() as home:
            start = time.perf_counter()
            load_model("embedded", home=Path(home))
            out["load_first_seconds"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    loaded = load_model("embedded")
    out["load_cached_seconds"] = round(time.perf_counter() - start, 2)

    protocol = Protocol(calib="wiki", nsamples=args.nsamples, seqlen=args.seqlen, eval_windows=args.eval_windows)
    calib = calibration_ids(loaded, protocol)
    evals = evaluation_ids(loaded, "wiki", protocol)
    start = time.perf_counter()
    inputs = capture_layer_inputs(loaded, calib, protocol.batch_size)
    out["capture_seconds"] = round(time.perf_counter() - start, 2)

    evaluation = {}
    for dtype in ("float32", "bfloat16"):
        result = perplexity(loaded, evals, dtype=dtype)
        evaluation[dtype] = {"ppl": round(result.ppl, 4), "tokens_per_second": round(result.tokens_per_second, 1)}
    out["eval_dense"] = evaluation
    out["bf16_vs_fp32_dense_rel_gap"] = abs(evaluation["bfloat16"]["ppl"] / evaluation["float32"]["ppl"] - 1)

    out["prune_seconds_at_50"] = {}
    for method in args.methods.split(","):
        result = prune_model(loaded, calib, PruneConfig(method, "unstructured", 0.5), inputs=inputs)
        out["prune_seconds_at_50"][method] = round(result.seconds, 2)
        if method == "wanda":
            with result.applied(loaded):
                gaps = {dtype: perplexity(loaded, evals, dtype=dtype).ppl for dtype in ("float32", "bfloat16")}
            out["eval_wanda50"] = {k: round(v, 4) for k, v in gaps.items()}
            out["bf16_vs_fp32_wanda50_rel_gap"] = abs(gaps["bfloat16"] / gaps["float32"] - 1)
    out["peak_rss_bytes"] = peak_rss_bytes()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

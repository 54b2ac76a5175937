"""How efficiently the final (exact) sensitivity map uses the machine; prints one JSON document.

The exact map prunes one module (or one whole layer) at a time and runs the probe windows from that layer to the
loss: per row of layer l, 8 probes (7 modules + the whole layer) through layers l..L-1 and the LM head. This
script times real rows of the engine (`compute_sensitivity`, metric "exact", rows spread over the depth), counts
their FLOPs, and divides by the bf16 matmul rate measured in the same run (before and after the rows, on an MLP
projection's shape), so the result is a ratio, comparable across machines:

- model FLOPs of a probe = 2 x (linear weights of the layers run + LM head weights) x tokens (the usual
  "2 N T" count), and the same plus the causal attention products (2 x seq^2 x head_dim per head and window,
  per layer run);
- a profiler breakdown of one full-depth probe: the share of time in matmuls (and their rate), in attention
  (and its rate), and in everything else, which is what bounds the ratio;
- fidelity: the timed rows against the same rows of the stored exact map (docs/runs/embedded-sensitivity.json,
  computed with torch's SDPA attention kernel before the blocked CPU kernel of devices/cpu_attention.py),
  when its protocol is this one: the largest and median absolute difference (nats/token) and the rank
  agreement over those cells;
- the minor page faults of one warm full-depth probe. The script re-executes itself under the engine's glibc
  malloc settings (devices/allocator.py), as the command line and the dashboard's job workers run.

    python benchmarks/final_map_efficiency.py --save docs/runs    # about 3-4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.first_map import REFERENCE, cpu_facts, matmul_rate, print_and_save, stored_exact_map  # noqa: E402
from pruning_core.devices.allocator import allocator_settings, reexec_with_allocator_settings  # noqa: E402
from pruning_core.analysis.sensitivity import _ProbeCache, compute_sensitivity, probe_ids, spearman  # noqa: E402
from pruning_core.devices.cpu_attention import PROFILER_LABEL  # noqa: E402
from pruning_core.models import load_model  # noqa: E402
from pruning_core.protocol import Protocol  # noqa: E402


def probe_flops(loaded, tokens: int, windows: int, seqlen: int, start: int) -> tuple[float, float]:
    """(2NT model FLOPs, the same plus causal attention FLOPs) of one probe from layer `start` to the loss."""
    adapter = loaded.adapter
    layers = adapter.decoder_layers(loaded.model)
    per_layer = sum(m.weight.numel() for m in adapter.layer_linears(layers[0]).values())
    head = loaded.model.get_output_embeddings().weight.numel()
    config = loaded.model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    depth = len(layers) - start
    model = 2.0 * per_layer * tokens * depth + 2.0 * head * (tokens - windows)
    attention = depth * windows * heads * 2.0 * seqlen * seqlen * head_dim  # QK^T + AV, causal half of each
    return model, model + attention


def fidelity(loaded, rows_values: dict[int, list[float]], probe_windows: int, nsamples: int, dtype: str) -> dict:
    """The timed rows (7 module cells + the whole-layer value each) against the stored exact map's same rows."""
    if not REFERENCE.exists():
        return {"compared": False, "why": f"{REFERENCE.name} is missing"}
    stored = stored_exact_map(loaded, probe_windows, nsamples, dtype)
    if stored is None:
        return {"compared": False, "why": "the stored map's model or protocol differs from this run's"}
    ours, theirs = [], []
    for layer, values in rows_values.items():
        ours += values
        theirs += [*stored["values"][layer], stored["layer_values"][layer]]
    differences = sorted(abs(a - b) for a, b in zip(ours, theirs))
    return {"compared": True, "reference": str(REFERENCE.relative_to(ROOT)), "cells": len(ours),
            "max_abs_difference": round(differences[-1], 6),
            "median_abs_difference": round(differences[len(differences) // 2], 6),
            "value_range": [round(min(theirs), 6), round(max(theirs), 6)],
            "spearman": round(spearman(ours, theirs), 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="0,10,20,29", help="decoder layers whose exact rows are timed")
    parser.add_argument("--probe-windows", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--save", default=None, help="folder for final-map-efficiency.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 2))
    rows = [int(r) for r in args.rows.split(",")]

    out: dict = {"machine": cpu_facts(), "allocator": allocator_settings(), "rows": rows,
                 "probe_windows": args.probe_windows, "dtype": args.dtype}
    rate_before = matmul_rate(torch.bfloat16)
    loaded = load_model("embedded")
    protocol = Protocol(calib="wiki", nsamples=32, seqlen=512, seed=0, eval_windows=8, dtype=args.dtype)
    kinds = len(loaded.adapter.module_kinds)
    tokens = args.probe_windows * protocol.seqlen

    clock = {"rows_start": None}
    finished: list[tuple[int, float]] = []

    def progress(_fraction: float, message: str) -> None:
        if clock["rows_start"] is None and message.startswith("exact"):
            clock["rows_start"] = time.perf_counter()

    rows_values: dict[int, list[float]] = {}

    def on_row(_sparsity, layer, values, layer_value) -> None:
        finished.append((layer, time.perf_counter()))
        rows_values[layer] = [*values, layer_value]

    compute_sensitivity(loaded, protocol, "wanda", [0.5], metrics=("exact",), probe_windows=args.probe_windows,
                        store=None, progress=progress, dtype=args.dtype, layers=rows, on_exact_row=on_row)
    rate_after = matmul_rate(torch.bfloat16)
    rate = (rate_before + rate_after) / 2
    model_flops = attention_flops = 0.0
    previous = clock["rows_start"]
    per_row = []
    for layer, at in finished:
        flops, with_attention = probe_flops(loaded, tokens, args.probe_windows, protocol.seqlen, layer)
        model_flops += (kinds + 1) * flops
        attention_flops += (kinds + 1) * with_attention
        per_row.append({"layer": layer, "seconds": round(at - previous, 2),
                        "gflops_per_s": round((kinds + 1) * flops / (at - previous) / 1e9, 1)})
        previous = at
    seconds = finished[-1][1] - clock["rows_start"]
    out["bf16_matmul_gflops"] = {"before": round(rate_before, 1), "after": round(rate_after, 1)}
    out["rows_seconds"] = round(seconds, 2)
    out["per_row"] = per_row
    out["throughput_gflops"] = {"model_2NT": round(model_flops / seconds / 1e9, 1),
                                "with_attention": round(attention_flops / seconds / 1e9, 1)}
    out["efficiency_vs_bf16_matmul"] = {"model_2NT": round(model_flops / seconds / 1e9 / rate, 3),
                                        "with_attention": round(attention_flops / seconds / 1e9 / rate, 3)}

    out["fidelity_vs_stored_map"] = fidelity(loaded, rows_values, args.probe_windows, protocol.nsamples, args.dtype)

    # Why: where one full-depth probe spends its time.
    ids = probe_ids(loaded, protocol, args.probe_windows)
    cache = _ProbeCache(loaded, ids, args.probe_windows, args.dtype, lambda _m: None)
    cache.loss_from(0, lambda _m: None)  # warm
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    cache.loss_from(0, lambda _m: None)
    plain_seconds = time.perf_counter() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        cache.loss_from(0, lambda _m: None)
        probe_seconds = time.perf_counter() - t0
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key != PROFILER_LABEL:  # a label, whose children are counted as themselves
            totals[event.key] = totals.get(event.key, 0.0) + event.self_cpu_time_total / 1e6
    profiled = sum(totals.values())
    # Attention: torch's SDPA kernel, or the blocked kernel's labelled calls (their batched products included,
    # which is why bmm is not counted with the model's matmuls).
    matmul = sum(v for k, v in totals.items() if k in ("aten::mm", "aten::addmm"))
    attention = sum(v for k, v in totals.items() if "scaled_dot_product" in k or "flash_attention" in k)
    attention += sum(e.cpu_time_total / 1e6 for e in prof.key_averages() if e.key == PROFILER_LABEL)
    flops, with_attention = probe_flops(loaded, tokens, args.probe_windows, protocol.seqlen, 0)
    layers = len(loaded.adapter.decoder_layers(loaded.model))
    attention_only = with_attention - flops
    out["full_depth_probe"] = {
        "seconds": round(plain_seconds, 3),
        "seconds_profiled": round(probe_seconds, 3),
        "page_faults (minor, one warm probe)": faults,
        "share": {"matmul": round(matmul / profiled, 3), "attention": round(attention / profiled, 3),
                  "other": round(1 - (matmul + attention) / profiled, 3)},
        "matmul_gflops": round(flops / matmul / 1e9, 1) if matmul else None,
        "attention_gflops (causal count)": round(attention_only / attention / 1e9, 1) if attention else None,
        "ceiling_if_everything_but_attention_ran_at_the_matmul_rate": round(
            flops / (flops / (rate * 1e9) + attention * probe_seconds / profiled) / (rate * 1e9), 3),
        "layers": layers,
    }
    return print_and_save(out, args.save, "final-map-efficiency.json")


if __name__ == "__main__":
    reexec_with_allocator_settings()  # as the CLI and job workers run (devices/allocator.py)
    sys.exit(main())

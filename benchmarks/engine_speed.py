"""Speed of the analysis engine on the embedded model; prints one JSON document.

Measures (issue 3's targets):
- the exact sensitivity map (wanda, one sparsity, all 30 x 7 cells plus the 30 whole-layer aggregates) with
  cached layer inputs; the time of the cells and of the aggregates is split by the map's progress messages;
- the same cells by full forward passes: for a sample of modules spread over the layers, the probe with the
  module masked is timed both ways, interleaved so machine noise hits both alike, with the same kernels
  (`_ProbeCache.loss_from(0)` is a full forward minus the embedding lookup); also one probe through the
  plain Hugging Face forward (`metrics.perplexity`), the naive baseline;
- the ceiling of that speed-up from the measured cost of one layer and of the LM head;
- the proxies (reconstruction, taylor) and their Spearman correlation with exact, and the top/bottom modules;
- exact rows recomputed in fp32 for a few layers, against the bf16 map (accuracy of the bf16 probes);
- a dense-propagation Wanda sweep of 9 sparsities: each point's (prune + eval) / eval;
- the store round trip of an already computed map; peak RSS (resource.getrusage's high-water mark, read after
  each phase, so the phase that raised it shows).
With --layers (a subset of decoder layers) the map is measured on those rows and extrapolated.

    python benchmarks/engine_speed.py --save docs/runs     # the full benchmark (about 25 min on 2 cores)
    python benchmarks/engine_speed.py --probe-windows 2 --layers 0,29 --verify-fp32-layers 29 --skip-sweep
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from pruning_core.devices.allocator import allocator_settings, reexec_with_allocator_settings
from pruning_core.analysis.estimates import (
    estimate_sensitivity,
    estimate_sweep,
    measure_throughput,
)
from pruning_core.masks import applied_masks
from pruning_core.metrics import perplexity
from pruning_core.models import load_model
from pruning_core.protocol import Protocol, calibration_ids
from pruning_core.statistics_cache import cached_statistics
from pruning_core.analysis.sensitivity import _MaskCache, _ProbeCache, compute_sensitivity, probe_ids, spearman
from pruning_core.store import Store
from pruning_core.analysis.sweep import SweepSpec, run_sweep


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _ranked_cells(exact: dict, count: int) -> dict:
    cells = [(value, f"{layer}.{kind}") for layer, row in zip(exact["layers"], exact["values"])
             for kind, value in zip(exact["modules"], row)]
    cells.sort(reverse=True)
    return {"most_sensitive": [[name, round(v, 5)] for v, name in cells[:count]],
            "least_sensitive": [[name, round(v, 5)] for v, name in cells[-count:][::-1]]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--calib", default="wiki")
    parser.add_argument("--probe-windows", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--nsamples", type=int, default=32, help="calibration windows (Wanda statistics)")
    parser.add_argument("--layers", default=None, help="comma-separated layer subset for the map (default all)")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="probe dtype")
    parser.add_argument("--full-modules", type=int, default=6, help="modules timed both ways (interleaved)")
    parser.add_argument("--verify-fp32-layers", default="0,15,29",
                        help="layers whose exact rows are recomputed in fp32 ('' to skip)")
    parser.add_argument("--skip-proxies", action="store_true")
    parser.add_argument("--sweep-eval-windows", type=int, default=8)
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--save", default=None, help="folder for embedded-sensitivity.json (maps + correlations)")
    args = parser.parse_args(argv)

    out: dict = {"allocator": allocator_settings(), "torch_threads": torch.get_num_threads(),
                 "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]}
    home = Path(tempfile.mkdtemp(prefix="prunescope-bench-"))
    store = Store(home / "bench.sqlite")
    t0 = time.perf_counter()
    loaded = load_model(args.model)
    out["model"] = loaded.name
    out["load_seconds"] = time.perf_counter() - t0
    load_rss = _rss_bytes()
    n_layers = len(loaded.adapter.decoder_layers(loaded.model))
    kinds = loaded.adapter.module_kinds
    layers = list(range(n_layers)) if not args.layers else [int(x) for x in args.layers.split(",")]
    protocol = Protocol(calib=args.calib, nsamples=args.nsamples, seqlen=args.seqlen,
                        eval_windows=args.sweep_eval_windows, dtype=args.dtype)
    _ = loaded.fingerprint

    # ---------------------------------------------------------------- exact map, cached layer inputs
    # Wall time between progress messages is attributed to the phase the message names.
    phase_seconds = {"shared": 0.0, "cells": 0.0, "layer_aggregates": 0.0}
    state = {"phase": "shared", "since": time.perf_counter()}

    def progress(fraction: float, message: str) -> None:
        if not message:
            return
        phase = ("layer_aggregates" if message.endswith("whole layer") else "cells") \
            if message.startswith("exact") else state["phase"]
        now = time.perf_counter()
        phase_seconds[state["phase"]] += now - state["since"]
        state.update(phase=phase, since=now)

    start = time.perf_counter()
    result = compute_sensitivity(loaded, protocol, "wanda", [0.5], ["exact"], args.probe_windows, store=store,
                                 progress=progress, dtype=args.dtype, layers=layers)
    cached_total = time.perf_counter() - start
    phase_seconds[state["phase"]] += time.perf_counter() - state["since"]
    exact = result["maps"][0]
    cells = len(layers) * len(kinds)
    out["exact_map"] = {
        "layers_mapped": len(layers), "modules": kinds, "probe_windows": args.probe_windows, "seqlen": args.seqlen,
        "nsamples": args.nsamples, "dtype": args.dtype, "seconds_total": cached_total,
        "seconds_shared (corpus, dense probe pass, wanda statistics)": phase_seconds["shared"],
        "seconds_cells (the 30 x 7 map)": phase_seconds["cells"],
        "seconds_layer_aggregates": phase_seconds["layer_aggregates"],
        "seconds_map (shared + cells)": phase_seconds["shared"] + phase_seconds["cells"],
        "per_cell_seconds": phase_seconds["cells"] / cells,
        "baseline_loss_nats": exact["baseline_loss"],
    }
    map_seconds = phase_seconds["shared"] + phase_seconds["cells"]
    if len(layers) < n_layers:
        # A row costs (n - l) layer forwards + the head (~6 layers here): scale the cells by those counts.
        measured = sum(n_layers - l + 6 for l in layers)
        full = sum(n_layers - l + 6 for l in range(n_layers))
        map_seconds = phase_seconds["shared"] + phase_seconds["cells"] * full / measured
        out["exact_map"]["extrapolated_map_seconds"] = map_seconds
        out["exact_map"]["note"] = f"measured on layers {layers}; extrapolated by layer-forward counts"
    out["exact_map"].update(_ranked_cells(exact, 5))
    peaks = out["peak_rss_bytes_after"] = {"load": load_rss, "exact_map": _rss_bytes()}

    # ---------------------------------------------------------------- same cells by full forward passes
    probe = _ProbeCache(loaded, probe_ids(loaded, protocol, args.probe_windows), protocol.batch_size, args.dtype,
                        lambda _m: None)

    stats = cached_statistics(loaded, protocol, "act_sq", store, calibration_ids(loaded, protocol), None)
    masks = _MaskCache(loaded, "wanda", stats, 0.5)
    step = max(1, n_layers // args.full_modules)
    sample = [(min(n_layers - 1, i * step + step // 2), kinds[(3 * i) % len(kinds)]) for i in range(args.full_modules)]
    cached_times, full_times, diffs = [], [], []
    for layer, kind in sample:
        name = loaded.adapter.qualified_name(layer, kind)
        m, w = masks.native([name])
        with applied_masks(loaded.model, m, w):
            t = time.perf_counter()
            cached_loss = probe.loss_from(layer, lambda _m: None)
            cached_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            full_loss = probe.loss_from(0, lambda _m: None)
            full_times.append(time.perf_counter() - t)
        diffs.append(abs(cached_loss - full_loss))
    name = loaded.adapter.qualified_name(*sample[0])
    m, w = masks.native([name])
    with applied_masks(loaded.model, m, w):
        hf = perplexity(loaded, probe.probe_ids, batch_size=protocol.batch_size, dtype=args.dtype)
    t = time.perf_counter()
    probe.loss_from(n_layers, lambda _m: None)
    head_seconds = time.perf_counter() - t
    per_full = sum(full_times) / len(full_times)
    layer_seconds = (per_full - head_seconds) / n_layers
    mean_depth = sum(n_layers - l for l in range(n_layers)) / n_layers
    full_cells_seconds = n_layers * len(kinds) * per_full
    cells_seconds = map_seconds - phase_seconds["shared"]
    out["full_forward_map"] = {
        "modules_timed": [f"{l}.{k}" for l, k in sample],
        "cached_probe_seconds": cached_times, "full_forward_probe_seconds": full_times,
        "sampled_speedup (same modules, interleaved)": sum(full_times) / sum(cached_times),
        "max_abs_diff_cached_vs_full_nats": max(diffs),
        "hf_forward_probe_seconds (metrics.perplexity, same dtype)": hf.seconds,
        "extrapolated_cells_seconds": full_cells_seconds,
        "extrapolated_map_seconds (shared + cells)": phase_seconds["shared"] + full_cells_seconds,
        "head_seconds_per_probe": head_seconds, "layer_seconds_per_probe": layer_seconds,
        "ceiling_speedup (n*layer + head) / (mean depth*layer + head)":
            (n_layers * layer_seconds + head_seconds) / (mean_depth * layer_seconds + head_seconds),
    }
    speedup = (phase_seconds["shared"] + full_cells_seconds) / map_seconds
    del probe, masks, stats
    gc.collect()
    peaks["full_forward_probes"] = _rss_bytes()
    out["exact_speedup_vs_full_forward (map, shared work included)"] = speedup
    out["exact_speedup_vs_full_forward (cells only)"] = full_cells_seconds / cells_seconds
    out["targets"] = {"exact_map_under_180s": map_seconds < 180, "speedup_at_least_1.7": speedup >= 1.7}

    # ---------------------------------------------------------------- store round trip
    t = time.perf_counter()
    again = compute_sensitivity(loaded, protocol, "wanda", [0.5], ["exact"], args.probe_windows, store=store,
                                dtype=args.dtype, layers=layers)
    out["store_round_trip_seconds"] = time.perf_counter() - t
    assert again["maps"][0]["values"] == exact["values"] and again["maps"][0]["cached"]
    out["targets"]["store_under_1s"] = out["store_round_trip_seconds"] < 1.0

    # ---------------------------------------------------------------- estimate vs measured
    throughput = measure_throughput(loaded, args.seqlen, args.dtype, store)
    est = estimate_sensitivity(loaded.describe(), protocol, "wanda", [0.5], ["exact"], args.probe_windows,
                               throughput)
    out["estimate"] = {"throughput_tokens_per_s": throughput, "sensitivity_estimate_seconds": est["seconds"],
                       "sensitivity_measured_seconds (total, aggregates included)": cached_total,
                       "ratio_estimate_over_measured": est["seconds"] / cached_total,
                       "peak_memory_estimate_bytes": est["peak_memory_bytes"]}

    # ---------------------------------------------------------------- proxies and their rank correlation
    document = {"exact": exact}
    if not args.skip_proxies:
        t = time.perf_counter()
        both = compute_sensitivity(loaded, protocol, "wanda", [0.5], ["exact", "reconstruction", "taylor"],
                                   args.probe_windows, store=store, dtype=args.dtype, layers=layers)
        out["proxies"] = {"seconds (exact from the store)": time.perf_counter() - t,
                          "spearman_vs_exact": {c["proxy"]: c["spearman"] for c in both["correlations"]}}
        for m in both["maps"]:
            document[m["metric"]] = m
            if m["metric"] != "exact":
                out["proxies"][m["metric"]] = _ranked_cells(m, 5)
        document["correlations"] = both["correlations"]
        exact_layers = exact["layer_values"]
        out["proxies"]["spearman_vs_exact_layer_aggregates"] = {
            m["metric"]: spearman(m["layer_values"], exact_layers) for m in both["maps"] if m["metric"] != "exact"}
        del both
        gc.collect()
        peaks["proxies"] = _rss_bytes()

    # ---------------------------------------------------------------- bf16 probes against fp32
    verify = [int(x) for x in args.verify_fp32_layers.split(",") if x.strip()] if args.dtype != "float32" else []
    verify = [l for l in verify if l in layers]
    if verify:
        t = time.perf_counter()
        fp32 = compute_sensitivity(loaded, protocol, "wanda", [0.5], ["exact"], args.probe_windows, store=store,
                                   dtype="float32", layers=verify)["maps"][0]
        low = [v for l in verify for v in exact["values"][layers.index(l)]]
        ref = [v for row in fp32["values"] for v in row]
        out["bf16_vs_fp32"] = {
            "layers": verify, "seconds_fp32_rows": time.perf_counter() - t,
            "baseline_loss_fp32": fp32["baseline_loss"], "baseline_loss_bf16": exact["baseline_loss"],
            "max_abs_diff_nats": max(abs(a - b) for a, b in zip(low, ref)),
            "mean_abs_diff_nats": sum(abs(a - b) for a, b in zip(low, ref)) / len(ref),
            "max_abs_value_fp32": max(abs(v) for v in ref),
            "spearman": spearman(low, ref),
        }
        document["fp32_rows"] = fp32
        peaks["fp32_rows"] = _rss_bytes()
    if args.save:
        folder = Path(args.save)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "embedded-sensitivity.json").write_text(json.dumps(document, indent=1))

    # ---------------------------------------------------------------- dense-propagation wanda sweep
    if not args.skip_sweep:
        spec = SweepSpec(model=args.model, methods=("wanda",), sparsities=tuple(round(0.1 * i, 1) for i in range(1, 10)),
                         eval_corpora=(args.calib,), propagation="dense", protocol=protocol)
        t = time.perf_counter()
        sweep = run_sweep(spec, loaded=loaded)
        sweep_seconds = time.perf_counter() - t
        ratios = [p["prune_seconds"] / p["eval_seconds"] for p in sweep["points"]]
        est_sweep = estimate_sweep(loaded.describe(), spec, throughput)
        out["sweep"] = {
            "points": [{"sparsity": p["target_sparsity"], "prune_seconds": p["prune_seconds"],
                        "eval_seconds": p["eval_seconds"], "ratio": r, "ppl": p["ppl"][args.calib]}
                       for p, r in zip(sweep["points"], ratios)],
            "note": "the first point's prune_seconds includes the one statistics walk shared by all points",
            "max_ratio_excluding_first": max(ratios[1:]), "seconds": sweep_seconds,
            "estimate_seconds": est_sweep["seconds"], "ratio_estimate_over_measured": est_sweep["seconds"] / sweep_seconds,
            # A point costs prune + eval; the target is (prune + eval) / eval <= 1.2.
        }
        out["targets"]["sweep_point_cost_at_most_1.2x_eval"] = all(1 + r <= 1.2 for r in ratios[1:])
    peaks["sweep"] = _rss_bytes()
    out["peak_rss_bytes"] = _rss_bytes()
    out["targets"]["peak_rss_under_4GB"] = out["peak_rss_bytes"] < 4 * 1024 ** 3
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    reexec_with_allocator_settings()  # as the CLI and job workers run (devices/allocator.py)
    sys.exit(main())

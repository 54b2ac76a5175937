"""Resident memory of a Wanda point, layer by layer, with and without the walk's per-layer heap release (issue 29).

The layer walk hands the heap's free pages back after each decoder layer (`devices.allocator.release_free_memory`,
glibc's malloc_trim). This script runs one Wanda 50 % point in pruned propagation (`run_sweep`, no store) twice,
each in its own process under the engine's allocator settings (as the CLI and job workers run): once as the
walk runs ("released") and once with the release turned off ("kept"). It samples /proc/self/statm every 5 ms
and reports, per decoder layer, the peak resident memory while the layer was walked and the resident memory
when it was done (GB), with the point's wall time. Without the release the resident size creeps up layer after
layer: glibc keeps the holes each layer's freed activations leave between its long-lived masks.

Usage: `python benchmarks/walk_heap.py [--model random:tinyllama-1.1b@bfloat16] [--nsamples 64]
[--out docs/runs/walk-heap-release.json]` (about 5 minutes per mode for the 1.1B shape on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

MODES = ("released", "kept")
RESULT_MARK = "WALK-HEAP "


def child(model: str, nsamples: int, mode: str) -> dict:
    """One Wanda point in this process; per-layer peaks and end-of-layer resident memory (GB)."""
    from pruning_core import walk
    from pruning_core.analysis.sweep import SweepSpec, run_sweep
    from pruning_core.models import load_model
    from pruning_core.protocol import Protocol

    page = os.sysconf("SC_PAGE_SIZE")

    def resident() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    phase, peaks = ["load"], {}

    def sample() -> None:
        while True:
            now, name = resident(), phase[0]
            peaks[name] = max(peaks.get(name, 0), now)
            time.sleep(0.005)

    threading.Thread(target=sample, daemon=True).start()
    if mode == "kept":
        walk.release_free_memory = lambda: False
    walk_layer, ends = walk._walk_layer, {}

    def labelled(loaded, layer, index, *args, **kwargs):
        phase[0] = f"layer {index}"
        try:
            return walk_layer(loaded, layer, index, *args, **kwargs)
        finally:
            phase[0] = f"after layer {index}"

    walk._walk_layer = labelled
    original_release = walk.release_free_memory

    def release_then_read() -> bool:
        done = original_release()
        ends[phase[0]] = resident()  # after the release (or none): what the next layer starts from
        return done

    walk.release_free_memory = release_then_read
    loaded = load_model(model)
    phase[0] = "loaded"
    spec = SweepSpec(model=model, methods=("wanda",), sparsities=(0.5,), eval_corpora=("wiki",),
                     protocol=Protocol(nsamples=nsamples, seqlen=512, eval_windows=8, batch_size=8))
    start = time.perf_counter()
    result = run_sweep(spec, loaded=loaded)
    seconds = time.perf_counter() - start
    phase[0] = "end"
    time.sleep(0.05)
    layers = sorted({int(k.split()[-1]) for k in peaks if k.startswith("layer ")})
    return {"mode": mode, "seconds": round(seconds, 1), "ppl": result["points"][0]["ppl"],
            "maxrss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3),
            "loaded_gb": round(peaks.get("loaded", 0) / 1e9, 3),
            "layer_peak_gb": [round(peaks.get(f"layer {i}", 0) / 1e9, 3) for i in layers],
            "layer_end_gb": [round(ends.get(f"after layer {i}", ends.get(f"layer {i}", 0)) / 1e9, 3) for i in layers]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:tinyllama-1.1b@bfloat16")
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(RESULT_MARK + json.dumps(child(args.model, args.nsamples, args.child)), flush=True)
        return
    from _child_runs import machine

    from pruning_core.devices.allocator import SETTINGS, with_allocator_settings

    env = with_allocator_settings(os.environ)
    out = {"what": __doc__.splitlines()[0], "model": args.model, "nsamples": args.nsamples, "seqlen": 512,
           "machine": machine(), "allocator": {k: env[k] for k in SETTINGS}, "runs": {}}
    for mode in MODES:
        done = subprocess.run([sys.executable, __file__, "--child", mode, "--model", args.model, "--nsamples",
                               str(args.nsamples)], env=env, capture_output=True, text=True, check=False)
        line = next((ln for ln in reversed(done.stdout.splitlines()) if ln.startswith(RESULT_MARK)), None)
        out["runs"][mode] = json.loads(line[len(RESULT_MARK):]) if line else {"error": done.stderr[-500:]}
        out["runs"][mode]["load_average_end"] = os.getloadavg()
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

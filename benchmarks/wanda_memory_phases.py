"""Where the memory of one Wanda 50 % point goes: peak resident memory per phase of `run_sweep` (no store).

Phases are the sweep's own progress messages (numbers folded, so "layer 3/32" and "layer 4/32" are one phase);
/proc/self/statm is sampled every 20 ms. docs/runs/wanda-point-memory-phases.json holds a run before and after the
walk and evaluation stopped copying the whole model's weights.

    nice -n 19 python benchmarks/wanda_memory_phases.py random:smollm2-360m float32 16 256
    (model, weight dtype float32|bfloat16, calibration windows, tokens per window)
"""
import json, sys, threading, time, os, resource, re
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch
from pruning_core.analysis.sweep import SweepSpec, run_sweep
from pruning_core.protocol import Protocol
from pruning_core.models import load_model

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

phase = ["start"]; peaks = {}; order = []
def sample():
    while True:
        r = rss(); p = phase[0]
        if p not in peaks: peaks[p] = 0; order.append(p)
        peaks[p] = max(peaks[p], r)
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
model, dtype = sys.argv[1], getattr(torch, sys.argv[2])
nsamples, seqlen = int(sys.argv[3]), int(sys.argv[4])
phase[0] = "load"
loaded = load_model(model, dtype=dtype)
mb = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
def progress(f, m):
    m = re.sub(r"\d+/\d+", "#", m); m = re.sub(r"window \d+", "window #", m)
    phase[0] = m[:60]
spec = SweepSpec(model=model, methods=("wanda",), sparsities=(0.5,), eval_corpora=("wiki",),
                 protocol=Protocol(nsamples=nsamples, seqlen=seqlen, eval_windows=4, batch_size=8,
                                   dtype="bfloat16" if dtype == torch.bfloat16 else "float32"))
t = time.time()
res = run_sweep(spec, loaded=loaded, progress=progress)
phase[0] = "end"; time.sleep(0.1)
print(json.dumps({"model_bytes": mb, "seconds": time.time() - t, "ppl": res["points"][0]["ppl"],
                  "sparsity": res["points"][0]["sparsity"], "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "phases": {p: round(peaks[p] / 1e9, 3) for p in order}}, indent=1))

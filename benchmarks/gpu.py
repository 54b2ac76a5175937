"""Pruning and evaluation on a CUDA GPU with layer-by-layer offload; writes one JSON document (docs/runs/gpu.json).

For each model (the embedded SmolLM2-135M and a model of at least 1B parameters, by default TinyLlama-1.1B from
the hub) the model stays in host memory and one decoder layer at a time visits the GPU
(`devices.placement.LayerOffload`). Measured per model:
- the bf16-against-fp32 perplexity gap on a few windows (`evaluate.bf16_agreement`: what "bf16 by default with
  verified agreement" rests on; the figure is recorded, the evaluation dtype is the device's default unless
  --dtype says otherwise);
- dense perplexity, its evaluation tokens/s and the peak GPU memory (torch.cuda.max_memory_allocated) of it;
- per method (Wanda, SparseGPT at 50 %): prune seconds, measured sparsity, peak GPU memory of the pruning walk,
  then the pruned perplexity and its tokens/s;
- the model's fp32 bytes beside the peaks, so the offload's bound (one layer, not the model) is visible;
- Wanda 2:4 and its prefill tokens/s with the weights dense and then on the GPU's sparse tensor cores
  (`devices.sparse_kernels.measure_two_four_speed`; on a CPU or a pre-Ampere GPU the reason it cannot).
A hub model that cannot be loaded (offline machine) is recorded with the loader's message and the run goes on.

Without a CUDA GPU (or with --quick) it runs the same code on the tiny random model `tiny-llama`, with
`LayerOffload(cpu, cpu)` on a machine without a GPU, so CI-like checks exercise it; the JSON then says that no
GPU was at hand and its numbers mean nothing about GPUs.

    python benchmarks/gpu.py                                   # on a GPU machine: embedded + TinyLlama-1.1B
    python benchmarks/gpu.py --hub-model meta-llama/Llama-3.2-1B --nsamples 128 --seqlen 2048
    python benchmarks/gpu.py --device cpu --quick              # the CPU path (seconds)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from pruning_core.errors import PruneScopeError
from pruning_core.devices.placement import LayerOffload, default_dtype, resolve_device
from pruning_core.devices.sparse_kernels import KernelSpeedConfig, measure_two_four_speed
from pruning_core.evaluate import bf16_agreement
from pruning_core.metrics import perplexity
from pruning_core.models import load_model
from pruning_core.protocol import Protocol, calibration_ids, evaluation_ids
from pruning_core.provenance import library_versions
from pruning_core.prune import PruneConfig, prune_model
from pruning_core.structured.speed import machine_facts

DEFAULT_HUB_MODEL = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
QUICK_PROTOCOL = Protocol(calib="wiki", nsamples=4, seqlen=32, eval_windows=4, batch_size=2)


def _log(message: str) -> None:
    print(f"[gpu bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> Optional[int]:
    """Peak bytes allocated on the GPU since the last reset (None on the CPU: there is no GPU memory)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


def _evaluate(loaded, eval_ids, protocol: Protocol, dtype: str, offload: LayerOffload, device) -> dict:
    _reset_peak(device)
    result = perplexity(loaded, eval_ids, batch_size=protocol.batch_size, dtype=dtype, offload=offload)
    return {"ppl": result.ppl, "tokens": result.tokens, "seconds": result.seconds,
            "tokens_per_second": result.tokens_per_second, "peak_gpu_bytes": _peak(device)}


def bench_model(source: str, protocol: Protocol, methods: list[str], sparsity: float, device: torch.device,
                dtype: Optional[str], agreement_windows: int, two_four: bool = True, quick: bool = False) -> dict:
    """Every figure of one model (see the module docstring); a model that cannot be loaded gives {"error"}."""
    _log(f"loading {source}")
    try:
        loaded = load_model(source)
    except PruneScopeError as exc:  # offline hub id, missing folder: record the loader's sentence, go on
        _log(f"skipped {source}: {exc}")
        return {"model": source, "error": str(exc)}
    facts = loaded.describe()
    offload = LayerOffload(device, torch.device("cpu"))
    dtype = dtype or default_dtype(device)
    calib = calibration_ids(loaded, protocol)
    eval_ids = evaluation_ids(loaded, "wiki", protocol)
    out = {"model": source, "parameters": facts["parameters"], "layers": facts["layers"],
           "model_fp32_bytes": facts["memory_bytes"], "eval_dtype": dtype, "eval_corpus": "wiki",
           "eval_windows": int(eval_ids.shape[0])}
    _log(f"{source}: bf16 agreement on {agreement_windows} windows")
    out["bf16_agreement"] = bf16_agreement(loaded, eval_ids[:agreement_windows], offload, protocol.batch_size)
    _log(f"{source}: dense evaluation")
    out["dense"] = _evaluate(loaded, eval_ids, protocol, dtype, offload, device)
    out["methods"] = {}
    for method in methods:
        config = PruneConfig(method, sparsity=sparsity)
        _log(f"{source}: pruning with {method} at {sparsity:.0%} (calibration dtype {config.calib_dtype})")
        _reset_peak(device)
        result = prune_model(loaded, calib, config, protocol.batch_size, offload=offload)
        pruned = {"prune_seconds": result.seconds, "sparsity": result.sparsity, "calib_dtype": config.calib_dtype,
                  "prune_peak_gpu_bytes": _peak(device)}
        with result.applied(loaded):
            pruned["eval"] = _evaluate(loaded, eval_ids, protocol, dtype, offload, device)
        out["methods"][method] = pruned
        _log(f"{source}: {method} pruned in {result.seconds:.1f} s, ppl {pruned['eval']['ppl']:.3f}")
    if two_four:
        # The 2:4 speed claim as a measurement: Wanda 2:4, then the same pruned model dense and on the sparse
        # tensor cores (`devices.sparse_kernels`); on a CPU or an older GPU the sentence saying why not.
        _log(f"{source}: wanda 2:4 on the sparse kernels")
        result = prune_model(loaded, calib, PruneConfig("wanda", "2:4", 0.5), protocol.batch_size, offload=offload)
        out["two_four"] = measure_two_four_speed(loaded, result.masks, device, result.weights,
                                                 KernelSpeedConfig(tokens=protocol.seqlen * 4 if not quick else 64,
                                                                   repeats=10 if not quick else 2))
        out["two_four"]["sparsity"] = result.sparsity
        out["two_four"].pop("measured", None)  # the claim's argument; its figures are the fields above
    out["layer_moves"] = len([m for m in offload.moves if m[0].startswith("layer")])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--hub-model", default=DEFAULT_HUB_MODEL,
                        help="a model of at least 1B parameters (hub id or folder); '' to skip it")
    parser.add_argument("--quick", action="store_true", help="the tiny random model and a tiny protocol only")
    parser.add_argument("--methods", default="wanda,sparsegpt")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="evaluation dtype (default: bfloat16 on CUDA, float32 on the CPU)")
    parser.add_argument("--agreement-windows", type=int, default=4, help="windows of the bf16/fp32 check")
    parser.add_argument("--no-two-four", action="store_true",
                        help="skip the 2:4 sparse-kernel timing (Wanda 2:4, dense against compressed weights)")
    parser.add_argument("--out", default="docs/runs/gpu.json")
    args = parser.parse_args(argv)

    try:
        device = resolve_device(args.device)
    except PruneScopeError as exc:  # --device cuda without a GPU: the one sentence, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    gpu = device.type == "cuda"
    quick = args.quick or not gpu
    note = None
    if not gpu:
        note = ("No CUDA GPU was at hand: this is the CPU path (--device cpu --quick) on the tiny random model, "
                "with each layer moved between two CPU device objects; its figures say nothing about GPUs. "
                "Run `python benchmarks/gpu.py` on a CUDA machine for the GPU figures.")
        _log(note)
    protocol = (QUICK_PROTOCOL if quick else
                Protocol(calib="wiki", nsamples=args.nsamples, seqlen=args.seqlen, eval_windows=args.eval_windows,
                         batch_size=args.batch_size)).validate()
    sources = ["tiny-llama"] if quick else ["embedded"] + ([args.hub_model] if args.hub_model else [])
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    start = time.perf_counter()
    models = [bench_model(source, protocol, methods, args.sparsity, device, args.dtype, args.agreement_windows,
                          not args.no_two_four, quick) for source in sources]
    document = {"benchmark": "gpu", "gpu_at_hand": gpu, "note": note, "device": str(device),
                "offload": "model in host memory, one decoder layer at a time on the compute device",
                "machine": machine_facts(device), "protocol": protocol.to_dict(), "sparsity": args.sparsity,
                "versions": library_versions(), "models": models, "seconds": time.perf_counter() - start}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    _log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

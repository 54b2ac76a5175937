"""The quantized model as GGUF from its own integers (issue 28 point 1): on the embedded SmolLM2-135M, round to
nearest 4-bit groups of 32 symmetric (Q4_0), asymmetric (Q4_1) and 8-bit groups of 32 symmetric (Q8_0), plus the
16-bit baseline (F16):
- bytes of the GGUF file on disk and of the compressed-tensors folder of the same quantized model;
- the file read back with the gguf package against the in-memory quantized weights (weights that differ, the
  largest change, as a share of a quantization step: Q4_1's fp16 minimum);
- PruneScope's perplexity of the in-memory quantized model, of exactly the file's weights (read back into the torch
  model) and llama.cpp's perplexity of the file (where llama-cpp-python is installed), on the same windows.
Records the CPU (model, flags), torch threads and the load average.
Usage: `python benchmarks/quantize_gguf.py [--out docs/runs/quantize-gguf.json] [--quick]` (--quick: the tiny
random model, seconds, numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pruning_core.gguf.read import gguf_weights_applied  # noqa: E402
from pruning_core.gguf.runtime import llama_cpp_available, llama_cpp_perplexity, runtime_info  # noqa: E402
from pruning_core.masks import applied_masks  # noqa: E402
from pruning_core.metrics import perplexity  # noqa: E402
from pruning_core.models import load_model  # noqa: E402
from pruning_core.protocol import Protocol, evaluation_ids  # noqa: E402
from pruning_core.quantization import export  # noqa: E402
from pruning_core.quantization.gguf_file import gguf_plan, write_quantized_gguf, write_sixteen_bit_gguf  # noqa: E402
from pruning_core.quantization.model import quantize_model  # noqa: E402
from pruning_core.quantization.scheme import QuantScheme  # noqa: E402
from pruning_core.sizes.files import saved_size  # noqa: E402
from pruning_core.structured.speed import machine_facts  # noqa: E402

FULL = {"model": "embedded", "seqlen": 512, "eval_windows": 4}
QUICK = {"model": "tiny-llama", "seqlen": 64, "eval_windows": 2}
SCHEMES = {"Q4_0": QuantScheme(4, 32, True, "rtn"), "Q4_1": QuantScheme(4, 32, False, "rtn"),
           "Q8_0": QuantScheme(8, 32, True, "rtn")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/runs/quantize-gguf.json")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    config = QUICK if args.quick else FULL
    lm = load_model(config["model"])
    protocol = Protocol(calib="wiki", seqlen=config["seqlen"], eval_windows=config["eval_windows"])
    ids = evaluation_ids(lm, "wiki", protocol)
    report = {"config": config, "machine": machine_facts(), "load_average": os.getloadavg(),
              "torch_threads": torch.get_num_threads(), "llama_cpp": runtime_info() if llama_cpp_available() else None,
              "entries": {}}
    with tempfile.TemporaryDirectory(prefix="prunescope-quantize-gguf-") as tmp:
        path = Path(tmp) / "base-F16.gguf"
        written = write_sixteen_bit_gguf(lm, path)
        entry = {"gguf_bytes": saved_size(path)["weight_bytes"], "readback": written["readback"],
                 "ppl_torch_in_memory": perplexity(lm, ids).ppl}
        with gguf_weights_applied(lm, path):
            entry["ppl_torch_file_weights"] = perplexity(lm, ids).ppl
        if llama_cpp_available():
            entry["ppl_llama_cpp"] = llama_cpp_perplexity(path, ids)["ppl"]
        report["entries"]["F16 (16-bit baseline)"] = entry
        print(json.dumps({"F16": entry}), flush=True)
        for kind, scheme in SCHEMES.items():
            clock = time.perf_counter()
            result = quantize_model(lm, None, scheme)
            path = Path(tmp) / f"{kind}.gguf"
            written = write_quantized_gguf(lm, result, path, gguf_plan(scheme))
            folder = Path(tmp) / f"{kind}-ct"
            export.write_compressed_tensors(lm, result, folder)
            entry = {"scheme": scheme.label(), "type": written["type"], "exact": written["exact"],
                     "gguf_bytes": saved_size(path)["weight_bytes"],
                     "compressed_tensors_bytes": saved_size(folder)["weight_bytes"],
                     "tensor_types": written["tensor_types"], "readback": written["readback"],
                     "readback_words": written["readback_words"]}
            with applied_masks(lm.model, result.masks, result.weights):
                entry["ppl_torch_in_memory"] = perplexity(lm, ids).ppl
            with gguf_weights_applied(lm, path):
                entry["ppl_torch_file_weights"] = perplexity(lm, ids).ppl
            if llama_cpp_available():
                entry["ppl_llama_cpp"] = llama_cpp_perplexity(path, ids)["ppl"]
            entry["seconds"] = time.perf_counter() - clock
            report["entries"][kind] = entry
            export.remove_folder(folder)
            print(json.dumps({kind: entry}), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

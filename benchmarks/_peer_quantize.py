"""The peer half of `benchmarks/quantization.py`: llm-compressor 0.14 `oneshot` with `GPTQModifier` or
`QuantizationModifier` (round to nearest) on given token windows, timed.

Runs with the python of the peer virtualenv (`../shared/tools/peer_venv.sh`), never with the project's: only this
file and `_peer_oneshot.py` import llmcompressor, and nothing in the project imports them.

Loads the model folder in fp32 (load time recorded apart), runs `oneshot` with weight-only integer quantization
of every Linear but `lm_head` (num_bits, group size or per channel, symmetric or not; GPTQ with its defaults:
blocks of 128, 1 % damping, static activation ordering, unless --actorder none), on exactly the windows it is
given (token ids: no tokenisation or shuffling on the peer side), then writes each quantized Linear's
*dequantized* weights (compressed-tensors' `fake_quantize` with the module's own scale and zero point: after
`QuantizationModifier` the stored weights are still the original ones) to `<out>/<method>.safetensors`, so the
caller evaluates both sides with the same code. Prints one JSON line: {"method", "oneshot_seconds",
"oneshot_cpu_seconds" (this process's CPU time over oneshot), "load_seconds", "weights", "torch_threads"}.

    <peer python> benchmarks/_peer_quantize.py --model FOLDER --ids ids.pt --method gptq --bits 4 --group-size 64 --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def _dataset(ids: torch.Tensor):
    from datasets import Dataset

    rows = ids.tolist()
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})


def _config_groups(bits: int, group_size: int, symmetric: bool) -> dict:
    weights = {"num_bits": bits, "type": "int", "symmetric": symmetric,
               "strategy": "group" if group_size > 0 else "channel"}
    if group_size > 0:
        weights["group_size"] = group_size
    return {"group_0": {"targets": ["Linear"], "weights": weights}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Hugging Face model folder")
    parser.add_argument("--ids", required=True, help="torch file holding the (n, seqlen) calibration token ids")
    parser.add_argument("--method", required=True, choices=["gptq", "rtn"])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64, help="0 = per output channel")
    parser.add_argument("--asymmetric", action="store_true")
    parser.add_argument("--actorder", default="static", help="GPTQ activation ordering: static (its default), none")
    parser.add_argument("--batch-size", type=int, default=1, help="oneshot's calibration batch size (its default: 1)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from llmcompressor import oneshot
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    groups = _config_groups(args.bits, args.group_size, not args.asymmetric)
    if args.method == "gptq":
        from llmcompressor.modifiers.gptq import GPTQModifier

        extra = {} if args.actorder == "static" else {"actorder": None}
        recipe = GPTQModifier(config_groups=groups, ignore=["lm_head"], block_size=128, dampening_frac=0.01, **extra)
    else:
        from llmcompressor.modifiers.quantization import QuantizationModifier

        recipe = QuantizationModifier(config_groups=groups, ignore=["lm_head"])
    ids = torch.load(args.ids, weights_only=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    load_seconds = time.perf_counter() - start
    start, cpu_start = time.perf_counter(), time.process_time()
    if args.method == "gptq":
        oneshot(model=model, dataset=_dataset(ids), recipe=recipe, num_calibration_samples=int(ids.shape[0]),
                max_seq_length=int(ids.shape[1]), shuffle_calibration_samples=False, batch_size=args.batch_size,
                pipeline="sequential")
    else:  # weight-only round to nearest needs no data
        oneshot(model=model, recipe=recipe)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    weights = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            scheme = getattr(module, "quantization_scheme", None)
            if isinstance(module, torch.nn.Linear) and scheme is not None and scheme.weights is not None:
                zero = getattr(module, "weight_zero_point", None)
                weights[f"{name}.weight"] = fake_quantize(module.weight, module.weight_scale, zero,
                                                          scheme.weights).to(torch.float32).contiguous()
    path = out / f"{args.method}.safetensors"
    save_file(weights, str(path))
    print(json.dumps({"method": args.method, "oneshot_seconds": round(seconds, 2),
                      "oneshot_cpu_seconds": round(cpu_seconds, 2), "load_seconds": round(load_seconds, 2),
                      "weights": str(path), "modules": len(weights), "torch_threads": torch.get_num_threads(),
                      "batch_size": args.batch_size, "actorder": args.actorder}), flush=True)


if __name__ == "__main__":
    main()

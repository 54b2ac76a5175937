"""The peer half of `benchmarks/peer_speed.py`: llm-compressor `oneshot` on given token windows, timed.

Runs with the python of the peer virtualenv (`../shared/tools/peer_venv.sh`), never with the project's: this is
the only file that imports llmcompressor, and nothing in the project imports this file.

For each requested sparsity it loads the model folder afresh (fp32, load time recorded apart), runs `oneshot`
with the method's modifier on exactly the windows it is given (a dataset of token ids, so no tokenisation or
shuffling on the peer side), and saves the pruned weights of every decoder-layer Linear to
`<out>/<method>-<sparsity>.safetensors`, so the caller evaluates both sides with the same code. Prints one JSON
line per point on stdout: {"method", "sparsity", "oneshot_seconds", "load_seconds", "weights", "torch_threads"}.

    <peer python> benchmarks/_peer_oneshot.py --model FOLDER --ids ids.pt --method wanda --sparsities 0.5 --out DIR
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


def _modifier(method: str, sparsity: float):
    # lm_head is tied to the embeddings in the embedded model and is never pruned on our side either.
    if method == "wanda":
        from llmcompressor.modifiers.pruning import WandaPruningModifier

        return WandaPruningModifier(sparsity=sparsity, mask_structure="0:0", targets=["Linear"], ignore=["lm_head"])
    if method == "sparsegpt":
        from llmcompressor.modifiers.pruning import SparseGPTModifier

        # The papers' (and our) settings: blocks of 128 columns, 1 % damping.
        return SparseGPTModifier(sparsity=sparsity, mask_structure="0:0", block_size=128, dampening_frac=0.01,
                                 targets=["Linear"], ignore=["lm_head"])
    raise SystemExit(f"unknown method {method!r}; use wanda or sparsegpt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Hugging Face model folder")
    parser.add_argument("--ids", required=True, help="torch file holding the (n, seqlen) calibration token ids")
    parser.add_argument("--method", required=True, choices=["wanda", "sparsegpt"])
    parser.add_argument("--sparsities", default="0.5", help="comma-separated, one oneshot run each")
    parser.add_argument("--batch-size", type=int, default=1, help="oneshot's calibration batch size (its default: 1)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from llmcompressor import oneshot
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    ids = torch.load(args.ids, weights_only=True)
    dataset = _dataset(ids)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for sparsity in (float(s) for s in args.sparsities.split(",")):
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        model.eval()
        load_seconds = time.perf_counter() - start
        start = time.perf_counter()
        oneshot(model=model, dataset=dataset, recipe=_modifier(args.method, sparsity),
                num_calibration_samples=int(ids.shape[0]), max_seq_length=int(ids.shape[1]),
                shuffle_calibration_samples=False, batch_size=args.batch_size, pipeline="sequential")
        seconds = time.perf_counter() - start
        weights = {f"{name}.weight": module.weight.detach().to(torch.float32).contiguous()
                   for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}."}
        path = out / f"{args.method}-{sparsity:g}.safetensors"
        save_file(weights, str(path))
        print(json.dumps({"method": args.method, "sparsity": sparsity, "oneshot_seconds": round(seconds, 2),
                          "load_seconds": round(load_seconds, 2), "weights": str(path),
                          "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size}), flush=True)
        del model


if __name__ == "__main__":
    main()

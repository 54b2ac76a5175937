"""The embedded model's sizes as files a runtime loads, measured by writing them (`pruning_core.sizes`).

For the dense model, a 50 % unstructured and a 2:4 magnitude mask (masks applied, zeros stored) and a structurally
pruned copy (MLP channels and heads removed by magnitude, no compensation: the file size does not depend on the
scores), each saved with `save_pretrained` as 16-bit safetensors into a temporary folder and stat'ed: the weight
files' bytes, every file's bytes, and the seconds a result's sizes took (its counts, the masks' digest, the
write; the dense model is written once, and a second ask reads the store). Records the machine and its load.
Prints JSON; `--out FILE` also writes it (docs/runs/saved-sizes.json).

    python benchmarks/saved_sizes.py [--model embedded] [--ratio 0.25] [--out docs/runs/saved-sizes.json]
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

from pruning_core.masks import Structure, keep_mask_from_scores  # noqa: E402
from pruning_core.models.loading import load_model  # noqa: E402
from pruning_core.sizes import records  # noqa: E402
from pruning_core.store import Store  # noqa: E402
from pruning_core.structured import StructuredConfig, prune_structured  # noqa: E402
from pruning_core.structured.speed import machine_facts  # noqa: E402


def _masks(loaded, structure: Structure, sparsity: float) -> dict:
    return {name: keep_mask_from_scores(module.weight.detach().abs(), sparsity, structure)
            for name, module in loaded.adapter.prunable_modules(loaded.model).items()}


def _row(name: str, sizes: dict, what: str, seconds: float) -> dict:
    record = records.measured(sizes, what)
    return {"setting": name, "what": what, "format": record["format"], "dtype": record.get("dtype"),
            "weight_bytes": record["weight_bytes"], "total_bytes": record["total_bytes"],
            "parameters": sizes["structured_parameters"] or sizes["parameters"], "seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--ratio", type=float, default=0.25, help="structured: decoder parameters removed")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    loaded = load_model(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "sizes.sqlite")  # a fresh store: every figure below is a real write
        for name, structure, sparsity in (("unstructured 50 %", Structure(), 0.5), ("2:4", Structure(2, 4), 0.0)):
            masks = _masks(loaded, structure, sparsity)  # made before the clock starts: not part of measuring
            start = time.perf_counter()
            sizes = records.sizes_from_masks(loaded, masks, str(structure), store=store)
            seconds = time.perf_counter() - start
            if not rows:
                rows.append(_row("dense", sizes, "dense", float("nan")))
            rows.append(_row(name, sizes, "pruned", seconds))
        start = time.perf_counter()
        again = records.sizes_from_masks(loaded, masks, "2:4", store=store)
        cached_seconds = time.perf_counter() - start  # read from the store: no file written (counts and digest)
        pruned = prune_structured(loaded, None, StructuredConfig(score="magnitude", compensate=False,
                                                                 ratio=args.ratio))
        start = time.perf_counter()
        sizes = records.structured_sizes(loaded, pruned.loaded, store, pruned.loadable_with_transformers,
                                         pruned.load_note)
        rows.append(_row(f"structured {pruned.ratio:.0%} of decoder parameters", sizes, "structured",
                         time.perf_counter() - start))
    report = {"model": loaded.name, "rows": rows,
              "cached_read_seconds": round(cached_seconds, 2),
              "same_as_dense": rows[1]["weight_bytes"] == rows[0]["weight_bytes"] == rows[2]["weight_bytes"],
              "structured_fraction_of_dense": rows[3]["weight_bytes"] / rows[0]["weight_bytes"],
              "check": again == records.sizes_from_masks(loaded, masks, "2:4"),  # the store gives what a write gives
              "machine": machine_facts(), "load_average": os.getloadavg()}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

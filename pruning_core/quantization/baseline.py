"""`prunescope quantize --bits 16`: the starting model, not quantized, as the 16-bit files of every format.

The baseline a quantized point is weighed against, written and measured the same way: the dense model (or a
structurally pruned folder) evaluated by THE evaluation (its dense perplexity, from the store when measured
before), then written as 16-bit safetensors (`export.write_16bit`, what transformers and vLLM load) and as a GGUF
F16 file (`gguf_file.write_sixteen_bit_gguf`, what llama.cpp runs), each measured on disk (`sizes.files.
saved_size`). A format not kept is written to a temporary folder, measured and removed. Nothing is quantized, so
nothing new is stored: the perplexity is the dense one the store already keeps.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Iterable, Optional, Union

from pruning_core import evaluate
from pruning_core.models import LoadedModel, load_model
from pruning_core.progress import ProgressFn, no_progress, sub_progress

#: The formats the baseline is written in.
BASELINE_FORMATS = ("safetensors-16bit", "gguf")


def baseline_label(spec) -> str:
    return "16-bit baseline (not quantized)" + (", a structurally pruned model" if spec.structured else "")


def run_baseline(spec, loaded: Optional[LoadedModel] = None, store=None, progress: Optional[ProgressFn] = None,
                 sixteen_dir: Optional[Union[str, Path]] = None, gguf_file: Optional[Union[str, Path]] = None,
                 formats: Iterable[str] = BASELINE_FORMATS) -> dict:
    """Evaluate and write the 16-bit baseline of `spec` (a `run.QuantizeSpec` with bits 16). sixteen_dir /
    gguf_file: where the safetensors folder / GGUF file are kept (None: measured in a temporary folder, then
    removed). formats: which of `BASELINE_FORMATS` to write and measure. Returns a record shaped like
    `run.quantized_record`'s ({"setting" (bits 16), "model", "protocol", "bytes" {format}, "ppl", "dense_ppl",
    "change" (0), "checks" {"gguf": the read-back check}, "seconds", "note": None}) plus "from_store" False."""
    from pruning_core.quantization.export import write_16bit
    from pruning_core.quantization.gguf_file import write_sixteen_bit_gguf
    from pruning_core.sizes.files import format_label, saved_size

    progress = progress or no_progress
    formats = tuple(formats)
    if loaded is None:
        loaded = load_model(spec.source, progress=sub_progress(progress, 0.0, 0.05))
    if "gguf" in formats:
        from pruning_core.gguf.architecture import architecture_for

        architecture_for(loaded)  # a family llama.cpp does not run is refused before the evaluation
    corpora = spec.corpora
    clock = time.perf_counter()
    dense = evaluate.evaluate_setting(loaded, spec.protocol, corpora, None, store=store,
                                      progress=sub_progress(progress, 0.05, 0.6))
    seconds = time.perf_counter() - clock
    dtype = {"float16": "float16", "bfloat16": "bfloat16"}[spec.scale_dtype]
    import torch

    sizes, checks = {}, {}
    with tempfile.TemporaryDirectory(prefix="prunescope-baseline-") as tmp:
        if "safetensors-16bit" in formats:
            progress(0.6, "writing the 16-bit safetensors folder")
            folder = Path(sixteen_dir) if sixteen_dir is not None else Path(tmp) / "model-16bit"
            write_16bit(loaded, folder, getattr(torch, dtype))
            sizes["safetensors-16bit"] = {**saved_size(folder), "label": format_label("safetensors-16bit"),
                                          "dtype": dtype}
        if "gguf" in formats:
            progress(0.8, "writing the GGUF file")
            path = Path(gguf_file) if gguf_file is not None else Path(tmp) / "model-F16.gguf"
            written = write_sixteen_bit_gguf(loaded, path, dtype)
            sizes["gguf"] = {**saved_size(path), "label": format_label("gguf"), "type": written["type"],
                             "exact": True, "re_rounded": False}
            checks["gguf"] = {k: written[k] for k in ("type", "words", "tensor_types", "readback", "readback_words")}
    ppl = dict(dense.dense_ppl)
    progress(1.0, "16-bit baseline done")
    return {"setting": {"bits": 16, "method": None, "group_size": None, "symmetric": None, "scale_dtype": dtype,
                        "start": spec.start, "mask": None, "prune": None, "label": baseline_label(spec)},
            "model": loaded.describe(), "protocol": dense.protocol, "sparsity": 0.0, "bytes": sizes, "ppl": ppl,
            "dense_ppl": ppl, "change": {c: 0.0 for c in ppl}, "checks": checks,
            "seconds": {"evaluation": seconds}, "note": None, "created": time.time(), "from_store": False}

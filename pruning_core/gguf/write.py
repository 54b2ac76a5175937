"""Write a llama-family model as one GGUF file that llama.cpp loads.

`export_gguf(loaded, path, "Q8_0")` writes the model as it is in memory (dense, masked, structurally pruned,
layers dropped): hyperparameters (`architecture`), tokenizer (`vocabulary`), tensors under llama.cpp's names and
rope layout (`tensors`), each in the type `types.choose_type` gives it, quantized by the `gguf` package. Every check
(family, type, row lengths) runs before the file is opened, so a refusal leaves nothing behind; the file is written
beside its final name and renamed at the end, so a crash never leaves a file that looks complete.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Mapping, Optional

import gguf
import numpy as np

from pruning_core.errors import ConfigError
from pruning_core.gguf.architecture import GgufArchitecture, architecture_for, write_hyperparameters
from pruning_core.gguf.tensors import _rope_kind, model_tensors, tensor_layout, to_llama_cpp_rope
from pruning_core.gguf.types import TypeChoice, check_writable, choose_type, file_type, gguf_version, qtype
from pruning_core.gguf.vocabulary import write_tokenizer
from pruning_core.models import LoadedModel
from pruning_core.progress import ProgressFn, no_progress

#: The suffix of every file this module writes.
SUFFIX = ".gguf"


def gguf_file_name(name: str, tensor_type: str) -> str:
    """'SmolLM2-135M-Instruct-Q8_0.gguf': the model's name (path separators replaced) and the type."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(name)).strip("-.") or "model"
    return f"{safe}-{qtype(tensor_type).name}{SUFFIX}"


def check_exportable(loaded: LoadedModel, tensor_type: str, fallback: Optional[str] = None) -> GgufArchitecture:
    """Every refusal `export_gguf` would raise for this model and type (family, type, row lengths), without
    converting a weight: call it before long work. Returns the architecture the file would have."""
    kind = check_writable(tensor_type)
    fallback = check_writable(fallback) if fallback is not None else None
    arch = architecture_for(loaded)
    for name, _, parameter, role in tensor_layout(loaded, arch):
        choose_type(name, tuple(parameter.shape), kind, role in ("embedding", "output"), fallback)
    return arch


def export_gguf(loaded: LoadedModel, path, tensor_type: str = "F16", fallback: Optional[str] = None,
                progress: Optional[ProgressFn] = None,
                packed: Optional[Mapping[str, tuple[str, np.ndarray]]] = None) -> dict:
    """Write `loaded` to the GGUF file `path` with its matrices in `tensor_type`.

    fallback: the type for a matrix whose row length `tensor_type`'s blocks do not divide (None: refuse in one
    sentence). packed: {Hugging Face parameter name: (type, bytes)}: blocks a quantizer already chose
    (`blocks.pack_blocks`, rows in the model's order; query and key rows are reordered here like any weight),
    written as they are instead of quantizing the parameter; the file's `general.file_type` is then theirs.
    Returns {"path", "bytes" (the file's size on disk), "type", "architecture" (`GgufArchitecture.
    to_dict`), "tokenizer" (where its keys came from), "tensor_types" {type: count}, "fallbacks" [{"tensor",
    "type", "reason"}], "tensors" [{"name", "type", "shape"}], "gguf_version", "seconds"}.
    Raises ConfigError (one sentence) for a family, type or shape llama.cpp or the gguf package cannot take.
    """
    progress = progress or no_progress
    start = time.perf_counter()
    kind = check_writable(tensor_type)
    if fallback is not None:
        fallback = check_writable(fallback)
    arch = architecture_for(loaded)
    out = Path(path).expanduser()
    if out.suffix.lower() != SUFFIX:
        raise ConfigError(f"A GGUF file name ends in {SUFFIX}; got '{out.name}'.")
    if out.is_dir():
        raise ConfigError(f"'{path}' is a folder; give a file path ending in {SUFFIX}.")
    tensors = list(model_tensors(loaded, arch))
    # Every type is chosen (and every refusal raised) before anything is written.
    packed = dict(packed or {})
    choices = [TypeChoice(check_writable(packed[t.source][0])) if t.source in packed else
               choose_type(t.name, t.values.shape, kind, t.role in ("embedding", "output"), fallback)
               for t in tensors]
    missing = sorted(set(packed) - {t.source for t in tensors})
    if missing:
        raise ConfigError(f"Packed blocks were given for {missing[0]}, which the model has no place for in GGUF.")
    main_kind = Counter(t for t, _ in packed.values()).most_common(1)[0][0] if packed else kind
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    writer = gguf.GGUFWriter(str(partial), arch.name)
    try:
        writer.add_name(loaded.name)
        writer.add_file_type(file_type(main_kind))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_hyperparameters(writer, arch)
        tokenizer = write_tokenizer(writer, loaded, arch.vocab)
        written = []
        for i, (tensor, choice) in enumerate(zip(tensors, choices)):
            if tensor.source in packed:
                data = packed[tensor.source][1]
                if _rope_kind(tensor.source):
                    data = np.ascontiguousarray(to_llama_cpp_rope(data, arch.head_dim))
            else:
                data = gguf.quants.quantize(tensor.values, qtype(choice.type))
            writer.add_tensor(tensor.name, data, raw_dtype=qtype(choice.type))
            written.append({"name": tensor.name, "type": choice.type, "shape": list(tensor.values.shape)})
            progress(0.9 * (i + 1) / len(tensors), f"quantized {tensor.name} to {choice.type}")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
        writer.close()
        os.replace(partial, out)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    progress(1.0, f"wrote {out.name}")
    return {"path": str(out), "bytes": out.stat().st_size, "type": main_kind, "fallback": fallback,
            "architecture": arch.to_dict(), "tokenizer": tokenizer,
            "tensor_types": dict(Counter(w["type"] for w in written)),
            "fallbacks": [{"tensor": t.name, "type": c.type, "reason": c.fallback_reason}
                          for t, c in zip(tensors, choices) if c.fallback_reason],
            "tensors": written, "gguf_version": gguf_version(), "seconds": time.perf_counter() - start}

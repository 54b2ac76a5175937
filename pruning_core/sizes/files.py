"""Sizes measured on disk: the bytes of the files a runtime loads, never a formula.

Every size a page or report shows for a saved model comes from `saved_size` on the folder (or file) that was
written. `FORMATS` names each format PruneScope writes and the runtimes that load it today (2026): the serving
stack stores and accelerates only dense, structurally smaller or quantized weights, not sparse ones.
"""

from __future__ import annotations

from pathlib import Path

#: Files that hold weights (what "the model weighs" means); config and tokenizer files are listed but not counted.
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")

#: format id -> (label, the runtimes that load it today).
FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    "safetensors-16bit": ("16-bit safetensors", ("transformers", "vLLM")),
    "compressed-tensors": ("compressed-tensors packed integers", ("transformers", "vLLM")),
    "gguf": ("GGUF", ("llama.cpp",)),
}


def format_label(fmt: str) -> str:
    """'16-bit safetensors (loaded by transformers, vLLM)': a format with the runtimes that load it."""
    label, runtimes = FORMATS[fmt]
    return f"{label} (loaded by {', '.join(runtimes)})"


def saved_size(path) -> dict:
    """The measured size of a saved model: {"weight_bytes" (files holding weights), "total_bytes" (every file),
    "files": [{"name" (relative to `path`), "bytes"}]}, from the files' sizes on disk (bytes). `path` is a folder
    (walked recursively, hidden files skipped) or a single file. Raises FileNotFoundError when it does not exist."""
    root = Path(path)
    if root.is_file():
        paths, base = [root], root.parent
    elif root.is_dir():
        paths = sorted(p for p in root.rglob("*")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
        base = root
    else:
        raise FileNotFoundError(f"{root} does not exist; nothing was saved there to measure.")
    files = [{"name": str(p.relative_to(base)), "bytes": p.stat().st_size} for p in paths]
    weights = sum(f["bytes"] for f in files if f["name"].endswith(WEIGHT_SUFFIXES))
    return {"weight_bytes": weights, "total_bytes": sum(f["bytes"] for f in files), "files": files}

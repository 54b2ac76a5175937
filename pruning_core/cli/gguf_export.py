"""`--export gguf` of `prunescope structured` and `prunescope export`: the model as a GGUF file llama.cpp runs.

`add_gguf_args` adds --export, --gguf-type and --gguf-fallback; `gguf_choice` checks them before any model is
loaded; `export_saved_folder` writes one saved Hugging Face folder (a structured one with per-layer widths too) as
a GGUF file in a folder written whole; `gguf_line` is the line the commands print, with the bytes measured on disk
by `sizes.files.saved_size`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pruning_core.errors import ConfigError

#: Formats --export writes.
EXPORT_FORMATS = ("gguf",)
DEFAULT_GGUF_TYPE = "F16"


def add_gguf_args(parser) -> None:
    from pruning_core.gguf.types import OFFERED

    parser.add_argument("--export", default=None, choices=EXPORT_FORMATS,
                        help="also write the model in a runtime's format: gguf = one .gguf file llama.cpp runs")
    parser.add_argument("--gguf-type", default=None, metavar="TYPE",
                        help=f"tensor type of the GGUF matrices: {', '.join(OFFERED)} (default {DEFAULT_GGUF_TYPE}; "
                             "Q4_K is read but not written by the gguf package)")
    parser.add_argument("--gguf-fallback", default=None, metavar="TYPE",
                        help="type of a matrix whose row length the --gguf-type blocks (32 weights) do not divide, "
                             "e.g. F16; without it such a model is refused")


def gguf_choice(args) -> tuple[Optional[str], Optional[str]]:
    """(type, fallback) of --export gguf, checked against what the gguf package writes, or (None, None) without
    --export; ConfigError when a --gguf-* option comes without --export gguf."""
    from pruning_core.gguf.types import check_writable

    if args.export != "gguf":
        if args.gguf_type or args.gguf_fallback:
            raise ConfigError("--gguf-type and --gguf-fallback are read with --export gguf; add it, or leave them "
                              "out.")
        return None, None
    kind = check_writable(args.gguf_type or DEFAULT_GGUF_TYPE)
    return kind, (check_writable(args.gguf_fallback) if args.gguf_fallback else None)


def gguf_line(path) -> str:
    """'wrote PATH (N bytes, GGUF Q8_0 for llama.cpp)': the bytes of the file on disk."""
    from pruning_core.sizes.files import saved_size

    size = saved_size(path)["weight_bytes"]
    return f"wrote {path} ({size:,} bytes, {Path(path).stem.rsplit('-', 1)[-1]} GGUF, loaded by llama.cpp)"


def export_saved_folder(folder, out_folder, name: str, kind: str, fallback: Optional[str]) -> dict:
    """Write the Hugging Face folder `folder` (plain, or structured with per-layer widths) as
    out_folder/<name>-<kind>.gguf, the folder written whole. Returns `export_gguf`'s record with "path" the final
    file and "bytes" measured by `saved_size`."""
    from transformers import AutoTokenizer

    from pruning_core.gguf.write import export_gguf, gguf_file_name
    from pruning_core.models import LoadedModel, adapter_for
    from pruning_core.outputs.files import folder_written_whole
    from pruning_core.sizes.files import saved_size
    from pruning_core.structured.slicing import load_structured

    model = load_structured(folder)
    loaded = LoadedModel(model, AutoTokenizer.from_pretrained(folder), str(folder), name, adapter_for(model))
    file_name = gguf_file_name(name, kind)
    with folder_written_whole(out_folder, "The GGUF folder") as tmp:
        record = export_gguf(loaded, Path(tmp) / file_name, kind, fallback=fallback)
    final = Path(out_folder) / file_name
    return {**record, "path": str(final), "bytes": saved_size(final)["weight_bytes"]}

"""GGUF tensor types PruneScope writes, and which type each tensor gets.

A type name ("F16", "Q8_0", "Q4_1"...) is a `gguf.GGMLQuantizationType`; a block type packs `block` consecutive
weights of one row (32 for Q8_0/Q4_0/Q4_1, 256 for the K types), so it needs a row length that `block` divides.
Whether the `gguf` package can *write* a type is asked of the package itself (it quantizes one block of zeros),
not read from a list: gguf 0.19 quantizes F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 but only reads Q4_K.

Which tensors get the requested type follows llama.cpp's own files: one-dimensional tensors (norms, biases) stay
F32; with a 4- or 5-bit type the token embedding (also the output layer when the two are tied) is Q8_0, as in the
embedded model's own Q4_1 file, because its rows are looked up one by one and dominate the error of a small model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import gguf
import numpy as np

from pruning_core.errors import ConfigError

#: The types a user can ask for, in the order a menu lists them (16-bit first, then smaller).
OFFERED = ("F32", "F16", "BF16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "Q4_K")
#: Types whose rows are stored at 16 or 32 bits: any row length works.
PLAIN = ("F32", "F16", "BF16")


def qtype(name: str) -> gguf.GGMLQuantizationType:
    """The `GGMLQuantizationType` called `name` (case-insensitive); ConfigError names the offered types."""
    key = str(name).strip().upper()
    if key not in OFFERED:
        raise ConfigError(f"GGUF type '{name}' is not one PruneScope writes; choose one of {', '.join(OFFERED)}.")
    return gguf.GGMLQuantizationType[key]


def block_size(name: str) -> int:
    """Weights per block of type `name` (1 for F32/F16/BF16)."""
    return int(gguf.GGML_QUANT_SIZES[qtype(name)][0])


@functools.lru_cache(maxsize=None)
def writable(name: str) -> bool:
    """Whether the installed `gguf` package can write type `name`: it is asked to quantize one block of zeros."""
    kind = qtype(name)
    try:
        gguf.quants.quantize(np.zeros((1, block_size(name)), dtype=np.float32), kind)
    except NotImplementedError:
        return False
    return True


def check_writable(name: str) -> str:
    """The canonical type name, or ConfigError in one sentence when the `gguf` package cannot write it."""
    kind = qtype(name).name
    if not writable(kind):
        can = [t for t in OFFERED if writable(t)]
        raise ConfigError(f"The installed gguf package {gguf_version()} can read {kind} but not write it; choose one "
                          f"of {', '.join(can)} (or make {kind} from the F16 file with llama.cpp's llama-quantize).")
    return kind


def gguf_version() -> str:
    """The installed `gguf` package's version (as a words-ready string)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gguf")
    except PackageNotFoundError:  # pragma: no cover - the package is a requirement
        return "(unknown version)"


def file_type(name: str) -> int:
    """`general.file_type` of a file whose matrices are mostly `name` (`gguf.LlamaFileType`)."""
    kind = qtype(name).name
    if kind == "F32":
        return int(gguf.LlamaFileType.ALL_F32)
    member = {"Q4_K": "MOSTLY_Q4_K_M"}.get(kind, f"MOSTLY_{kind}")
    return int(gguf.LlamaFileType[member])


@dataclass(frozen=True)
class TypeChoice:
    """The type one tensor is written in, and why when it is not the requested one.

    type: the type name written; fallback_reason: None when it is the rule's type, else one sentence (the row
    length the requested type's block does not divide).
    """

    type: str
    fallback_reason: Optional[str] = None


def embedding_type(requested: str) -> str:
    """The token embedding's type for a file of `requested` matrices: Q8_0 under 4- and 5-bit types (module
    docstring), else the requested type."""
    kind = qtype(requested).name
    return "Q8_0" if kind.startswith(("Q4", "Q5")) else kind


def choose_type(tensor_name: str, shape: tuple[int, ...], requested: str, is_embedding: bool,
                fallback: Optional[str]) -> TypeChoice:
    """The type of one tensor (GGUF name `tensor_name`, numpy shape (rows, row length)).

    One-dimensional tensors are F32; embeddings follow `embedding_type`; a matrix whose row length the block of
    its type does not divide takes `fallback` (a type that fits) and says so, or, without a fallback, raises
    ConfigError in one sentence naming the tensor, its row length and the way out.
    """
    if len(shape) < 2:
        return TypeChoice("F32")
    kind = embedding_type(requested) if is_embedding else qtype(requested).name
    row = int(shape[-1])
    block = block_size(kind)
    if row % block == 0:
        return TypeChoice(kind)
    reason = f"{tensor_name} has rows of {row} weights, which {kind}'s blocks of {block} do not divide"
    if fallback is None:
        raise ConfigError(f"{reason}; choose F16 or BF16, or allow a fallback type for such tensors "
                          f"(--gguf-fallback F16).")
    fallback_kind = check_writable(fallback)
    if row % block_size(fallback_kind) != 0:
        raise ConfigError(f"{reason}, nor do the fallback {fallback_kind}'s blocks of {block_size(fallback_kind)}; "
                          "choose F16 or BF16 as the fallback.")
    return TypeChoice(fallback_kind, f"{reason}, so it is stored as {fallback_kind}")

"""GGUF blocks built from integers already chosen: Q4_0, Q4_1 and Q8_0 written bit for bit, not re-quantized.

ggml's block types (ggml-common.h; the `gguf` package's `quants` reads them the same way) hold 32 consecutive
weights of one row:
- Q4_0: fp16 d, then 16 bytes of nibbles; x = d * (n - 8), n in 0..15.
- Q4_1: fp16 d, fp16 m, then 16 bytes of nibbles; x = d * n + m.
- Q8_0: fp16 d, then 32 int8; x = d * q.
Nibble byte j of a block holds weight j in its low four bits and weight j + 16 in its high four bits.

`pack_blocks` takes the unsigned nibbles (or int8 values for Q8_0) and the per-block d (and m) a quantizer chose
and returns the bytes llama.cpp reads, (rows, blocks per row x bytes per block) uint8, the shape the `gguf`
writer's `add_tensor(..., raw_dtype=...)` takes.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from pruning_core.errors import ConfigError

#: Weights per block of the three types (ggml's QK4_0, QK4_1, QK8_0).
BLOCK = 32
#: Bytes per block: the 16-bit d (and m) then the packed values.
BLOCK_BYTES = {"Q4_0": 2 + BLOCK // 2, "Q4_1": 4 + BLOCK // 2, "Q8_0": 2 + BLOCK}
EXACT_TYPES = tuple(BLOCK_BYTES)


def _nibbles(values: np.ndarray) -> np.ndarray:
    """(rows, blocks, 32) uint8 in 0..15 -> (rows, blocks, 16): weight j low, weight j + 16 high."""
    return values[..., : BLOCK // 2] | (values[..., BLOCK // 2:] << np.uint8(4))


def pack_blocks(kind: str, values: np.ndarray, d: np.ndarray, m: Optional[np.ndarray] = None) -> np.ndarray:
    """The bytes of a (rows, cols) matrix in GGUF type `kind` (module docstring).

    values: (rows, cols) integers: nibbles 0..15 for Q4_0/Q4_1, -128..127 for Q8_0. d, m: (rows, cols / 32) fp16
    (m for Q4_1 only). Returns (rows, cols / 32 * BLOCK_BYTES[kind]) uint8. Raises ConfigError when the shapes or
    value ranges do not fit the type (a caller's mistake, said in one sentence)."""
    if kind not in BLOCK_BYTES:
        raise ConfigError(f"GGUF type {kind} is not one PruneScope packs from integers; use one of "
                          f"{', '.join(EXACT_TYPES)}.")
    rows, cols = values.shape
    if cols % BLOCK:
        raise ConfigError(f"Rows of {cols} weights do not split into {kind}'s blocks of {BLOCK}.")
    blocks = cols // BLOCK
    if d.shape != (rows, blocks) or (kind == "Q4_1") != (m is not None) or (m is not None and m.shape != d.shape):
        raise ConfigError(f"{kind} needs one fp16 scale{' and one minimum' if kind == 'Q4_1' else ''} per block of "
                          f"{BLOCK} weights: ({rows}, {blocks}), got {tuple(d.shape)}.")
    low, high = (-128, 127) if kind == "Q8_0" else (0, 15)
    if values.size and (int(values.min()) < low or int(values.max()) > high):
        raise ConfigError(f"{kind} stores values in {low}..{high}; got {int(values.min())}..{int(values.max())}.")
    grouped = values.reshape(rows, blocks, BLOCK)
    parts = [d.astype(np.float16).reshape(rows, blocks, 1).view(np.uint8)]
    if kind == "Q4_1":
        parts.append(m.astype(np.float16).reshape(rows, blocks, 1).view(np.uint8))
    if kind == "Q8_0":
        parts.append(grouped.astype(np.int8).view(np.uint8))
    else:
        parts.append(_nibbles(grouped.astype(np.uint8)))
    packed = np.concatenate(parts, axis=-1)  # (rows, blocks, BLOCK_BYTES)
    return np.ascontiguousarray(packed.reshape(rows, blocks * BLOCK_BYTES[kind]))

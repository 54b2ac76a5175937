"""A quantized model as one GGUF file llama.cpp runs: written from its integers where GGUF's blocks hold the scheme
exactly, else (only when asked) re-rounded; read back and compared with the in-memory quantized weights.

Our integers (`quantization.scheme`): signed q in [qmin, qmax], x = (q - z) * s, s a 16-bit scale per group.
GGUF's blocks (`gguf.blocks`) hold 32 weights of a row with an fp16 scale d, so three schemes map onto them:
- 4-bit, groups of 32, symmetric -> Q4_0: n = q + 8 (0..15), d = s: x = d (n - 8), bit for bit.
- 4-bit, groups of 32, asymmetric -> Q4_1: n = q + 8, d = s, m = -s (z + 8) rounded to fp16: x = d n + m. The
  product s (z + 8) needs up to 15 significant bits and fp16 keeps 11, so m may round: a weight then moves by at
  most half an fp16 step of m (at most 15 s / 2^11, under 0.8 % of a quantization step; 0.48 % on a tiny model). `readback_check` measures
  how many weights moved and by how much on the file itself, and the record says it.
- 8-bit, groups of 32, symmetric -> Q8_0: q as int8, d = s: x = d q, bit for bit.
Scales must be fp16 (GGUF's d is fp16): a bfloat16 scale is refused. Any other scheme (groups of 64, per channel,
3 bits, asymmetric 8-bit) has no GGUF block that stores it; `gguf_plan` refuses it in one sentence naming what
works, or, given `--gguf-type`, re-rounds the dequantized weights with the `gguf` package's quantizer and the record
labels the file "re-rounded". Embeddings, the LM head and norms are not quantized by PruneScope and are written in
the scale's 16-bit type (F16), as the compressed-tensors folder keeps them, so both files hold the same model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pruning_core.errors import ConfigError
from pruning_core.models import LoadedModel
from pruning_core.progress import ProgressFn
from pruning_core.quantization.quantizer import QuantizedMatrix
from pruning_core.quantization.scheme import QuantScheme

#: GGUF type of the tensors PruneScope does not quantize (embeddings, LM head), by the scheme's scale dtype.
SIXTEEN_BIT_TYPES = {"float16": "F16", "bfloat16": "BF16"}


@dataclass(frozen=True)
class GgufPlan:
    """How a scheme is written to GGUF: `type` (the matrices' GGUF type) and `exact` (True: from our integers,
    False: the dequantized weights re-rounded by the gguf package's quantizer)."""

    type: str
    exact: bool

    def words(self) -> str:
        return (f"GGUF {self.type}, written from the quantized integers" if self.exact else
                f"GGUF {self.type}, re-rounded from the dequantized weights (not the quantized model's integers)")


#: The GGUF block types this module writes from a scheme's integers (the three of the module docstring).
EXACT_TYPES = ("Q4_0", "Q4_1", "Q8_0")


def block_type(bits: int, group_size: Optional[int], symmetric: bool) -> Optional[str]:
    """The GGUF block type with this layout (32 weights of a row per block, one scale, a minimum when asymmetric):
    Q4_0/Q4_1, Q5_0/Q5_1, Q8_0 (symmetric only), or None (GGUF has no block of that layout)."""
    if group_size != 32:
        return None
    if bits in (4, 5):
        return f"Q{bits}_{0 if symmetric else 1}"
    return "Q8_0" if bits == 8 and symmetric else None


def exact_type(scheme: QuantScheme) -> Optional[str]:
    """The GGUF type that stores `scheme` exactly (module docstring; one of `EXACT_TYPES`), or None."""
    kind = block_type(scheme.bits, scheme.group_size, scheme.symmetric)
    return kind if scheme.scale_dtype == "float16" and kind in EXACT_TYPES else None


def gguf_plan(scheme: QuantScheme, requested: Optional[str] = None) -> GgufPlan:
    """The GGUF type and whether it is exact, for `scheme` and an optional `--gguf-type`; ConfigError (one
    sentence naming what works) when the scheme has no exact GGUF type and none was requested."""
    from pruning_core.gguf.types import check_writable

    exact = exact_type(scheme)
    if requested is not None:
        kind = check_writable(requested)
        return GgufPlan(kind, exact == kind)
    if exact is None:
        why = ("its scales are bfloat16 and GGUF's are fp16" if scheme.scale_dtype != "float16" and
               scheme.group_size == 32 else "GGUF's blocks hold 32 weights with one fp16 scale (Q4_0, Q4_1 with a "
               "minimum, Q8_0 symmetric)")
        raise ConfigError(f"{scheme.label()} cannot be stored exactly in GGUF, since {why}; quantize with "
                          "--group-size 32 (4-bit, or 8-bit symmetric) and --scale-dtype float16, or add --gguf-type "
                          "Q4_0 (or another type) to re-round the dequantized weights, which quantize.json then "
                          "labels re-rounded.")
    return GgufPlan(exact, True)


def matrix_blocks(matrix: QuantizedMatrix, kind: str) -> np.ndarray:
    """The GGUF bytes of one quantized (out, in) matrix in its exact type `kind` (module docstring)."""
    from pruning_core.gguf.blocks import pack_blocks

    scheme = matrix.scheme
    ints = matrix.ints.to(torch.int16)
    scale = matrix.scale.to(torch.float16)
    if not torch.equal(scale.to(torch.float32), matrix.scale):
        raise ConfigError("A scale is not an fp16 value, so GGUF's fp16 block scale cannot hold it; quantize with "
                          "--scale-dtype float16.")
    d = scale.numpy()
    if kind == "Q8_0":
        return pack_blocks(kind, ints.numpy(), d)
    nibbles = (ints - scheme.qmin).numpy()  # q + 8: 0..15
    if kind == "Q4_0":
        return pack_blocks(kind, nibbles, d)
    minimum = (-(matrix.scale * (matrix.zero.to(torch.float32) - scheme.qmin))).to(torch.float16).numpy()
    return pack_blocks(kind, nibbles, d, minimum)


def readback_check(loaded: LoadedModel, path, expected: Mapping[str, torch.Tensor],
                   steps: Optional[Mapping[str, torch.Tensor]] = None) -> dict:
    """Read the GGUF file `path` back with the `gguf` package's reader and dequantizer and compare it with
    `expected` ({parameter name: the weights the file should hold, native layout}): {"tensors", "weights",
    "identical" (every weight equal), "changed_weights", "max_abs_change", "max_change_in_steps" (the largest
    change over its group's scale, when `steps` gives {parameter name: (out, groups) scale})}."""
    from pruning_core.gguf.read import gguf_state_dict

    state = gguf_state_dict(loaded, path)
    changed, total, largest, largest_steps = 0, 0, 0.0, 0.0
    for name, want in expected.items():
        got = state[name]
        diff = (got - want.to(torch.float32)).abs()
        changed += int((diff > 0).sum())
        total += diff.numel()
        largest = max(largest, float(diff.max()) if diff.numel() else 0.0)
        if steps is not None and name in steps:
            scale = steps[name]
            per = scale.repeat_interleave(diff.shape[1] // scale.shape[1], dim=1)
            largest_steps = max(largest_steps, float((diff / per).max()))
    record = {"tensors": len(expected), "weights": total, "identical": changed == 0, "changed_weights": changed,
              "max_abs_change": largest}
    if steps is not None:
        record["max_change_in_steps"] = largest_steps
    return record


def readback_words(kind: str, check: Mapping, what: str = "the quantized model's") -> str:
    """One sentence on what reading the file back found (`what`: whose weights it was compared with)."""
    if check["identical"]:
        return (f"Read back with the gguf package, the {kind} file dequantizes to exactly {what} "
                f"weights ({check['weights']:,} weights in {check['tensors']} matrices).")
    steps = check.get("max_change_in_steps")
    why = (" because Q4_1 stores each group's minimum -s(z + 8) as an fp16 value" if kind == "Q4_1" else "")
    return (f"Read back with the gguf package, {check['changed_weights']:,} of {check['weights']:,} weights of the "
            f"{kind} file differ from {what}{why}, by at most {check['max_abs_change']:.3g}"
            + (f" ({steps:.2%} of a quantization step)" if steps is not None else "") + ".")


def write_quantized_gguf(loaded: LoadedModel, result, path, plan: GgufPlan,
                         progress: Optional[ProgressFn] = None) -> dict:
    """Write the quantized model (`quantization.model.QuantizeResult`) of `loaded` to the GGUF file `path` as
    `plan` says, then read it back (`readback_check`). Returns {"type", "exact", "re_rounded" (False, or the words
    saying the weights were re-rounded), "words", "tensor_types", "architecture", "readback", "readback_words"}."""
    from pruning_core.gguf.write import export_gguf
    from pruning_core.masks import applied_masks

    scheme = result.scheme
    other = SIXTEEN_BIT_TYPES[scheme.scale_dtype]
    weights = {f"{name}.weight": result.weights[name] for name in result.matrices}
    steps = {f"{name}.weight": m.scale for name, m in result.matrices.items()}
    if plan.exact:
        packed = {f"{name}.weight": (plan.type, matrix_blocks(matrix, plan.type))
                  for name, matrix in result.matrices.items()}
        written = export_gguf(loaded, path, other, progress=progress, packed=packed)
    else:
        with applied_masks(loaded.model, result.masks, result.weights):
            written = export_gguf(loaded, path, plan.type, progress=progress)
    check = readback_check(loaded, path, weights, steps)
    return {"type": plan.type, "exact": plan.exact,
            "re_rounded": False if plan.exact else (f"the dequantized {scheme.label()} weights re-rounded to "
                                                    f"{plan.type} by the gguf package's quantizer"),
            "words": plan.words(), "tensor_types": written["tensor_types"], "architecture": written["architecture"],
            "readback": check, "readback_words": readback_words(plan.type, check)}


def write_sixteen_bit_gguf(loaded: LoadedModel, path, dtype: str = "float16",
                           progress: Optional[ProgressFn] = None) -> dict:
    """The 16-bit baseline: `loaded` as it is, every matrix in F16 (or BF16), read back and compared with its
    weights rounded to that type. Returns the same keys as `write_quantized_gguf`."""
    from pruning_core.gguf.write import export_gguf

    kind = SIXTEEN_BIT_TYPES[dtype]
    written = export_gguf(loaded, path, kind, progress=progress)
    torch_dtype = torch.float16 if dtype == "float16" else torch.bfloat16
    expected = {name: p.detach().to(torch_dtype).to(torch.float32)
                for name, p in loaded.model.named_parameters() if p.ndim == 2}
    check = readback_check(loaded, Path(path), expected)
    return {"type": kind, "exact": True, "re_rounded": False, "words": f"GGUF {kind}, the 16-bit weights",
            "tensor_types": written["tensor_types"], "architecture": written["architecture"], "readback": check,
            "readback_words": readback_words(kind, check, f"the model's {kind}-rounded")}

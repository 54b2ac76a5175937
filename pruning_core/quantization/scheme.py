"""What a weight quantization is: bits, grouping, symmetry, the 16-bit scale dtype, and the rounding method.

The integer convention is compressed-tensors' (and so vLLM's and llm-compressor's): b-bit values are signed,
q in [-2^(b-1), 2^(b-1) - 1], and a weight is w = (q - z) * s with one 16-bit scale s (and, when asymmetric, one
integer zero point z) per output row and group of `group_size` consecutive input weights (per output channel
when `group_size` is None). Symmetric: s = max|w| / ((2^b - 1) / 2), z = 0. Asymmetric: s = (max - min) / (2^b - 1)
over the group with min <= 0 <= max, z = round(-2^(b-1) - min / s). Both keep zero exactly representable, so a
pruned weight stays exactly zero after quantization.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Union

import torch

from pruning_core.errors import ConfigError

#: Rounding methods: round-to-nearest, and GPTQ (round column by column, spreading each column's error over the
#: later columns with the inverse Hessian, as SparseGPT does for pruning).
METHODS = ("rtn", "gptq")
#: Bit widths accepted: what the compressed-tensors "pack-quantized" format stores (it packs 1-8 bits into int32;
#: 1 bit is no longer a useful signed integer). 8, 4 and 3 are the widths the dashboard offers.
MIN_BITS, MAX_BITS = 2, 8
#: 16-bit dtypes a scale may be stored in. float16 by default: 3 more mantissa bits than bfloat16 (a finer scale),
#: and the type of the scales of the GGUF Q4_1 file the embedded model comes from, so 4-bit groups of 32
#: asymmetric keep its scales exactly.
SCALE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
#: GPTQ's column orders. "static" (the default, llm-compressor's `actorder="static"`): every group's scale and zero
#: point are taken up front from the original weights of its natural group (columns g*G..(g+1)*G), then the sweep
#: visits columns in order of decreasing Hessian diagonal (the inputs with the most energy first, while the most
#: later columns are left to absorb their error), each column rounded with its natural group's scale; the file
#: keeps natural groups, so it needs no group index. "none": natural column order, each group's scale taken when
#: the sweep reaches it, from its weights as updated by the earlier columns (the GPTQ paper's code).
ACTORDERS = ("static", "none")


@dataclass(frozen=True)
class QuantScheme:
    """One weight-only quantization setting (see the module docstring for the integer convention).

    bits: integer width (2-8). group_size: input weights sharing one scale, or None for one scale per output row
    ("channel"). symmetric: z = 0, else an integer zero point per group. method: "rtn" or "gptq".
    scale_dtype: the 16-bit type scales are rounded to (the in-memory model uses the rounded scales, so it is
    exactly what the exported file holds). actorder: GPTQ's column order, "static" or "none" (`ACTORDERS`); round
    to nearest has no column order, so an "rtn" scheme always holds "none" (one setting, one stored result).
    """

    bits: int = 4
    group_size: Optional[int] = None
    symmetric: bool = True
    method: str = "gptq"
    scale_dtype: str = "float16"
    actorder: str = "static"

    def __post_init__(self) -> None:
        if self.method == "rtn":
            object.__setattr__(self, "actorder", "none")

    def validate(self) -> "QuantScheme":
        """Check the setting; raises ConfigError with one sentence naming the problem and the fix."""
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise ConfigError(f"Bits {self.bits!r} cannot be stored; give an integer from {MIN_BITS} to {MAX_BITS} "
                              "(8, 4 or 3 are the usual weight widths).")
        if self.group_size is not None and (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                                            or self.group_size < 1):
            raise ConfigError(f"Group size {self.group_size!r} is not a positive integer; give e.g. 64 or 32, or "
                              "'channel' for one scale per output channel.")
        if self.method not in METHODS:
            raise ConfigError(f"Quantization method '{self.method}' is unknown; use one of {', '.join(METHODS)}.")
        if self.scale_dtype not in SCALE_DTYPES:
            raise ConfigError(f"Scale dtype '{self.scale_dtype}' is unknown; use one of {', '.join(SCALE_DTYPES)}.")
        if self.actorder not in ACTORDERS:
            raise ConfigError(f"Activation order '{self.actorder}' is unknown; use one of {', '.join(ACTORDERS)}.")
        return self

    def check_width(self, columns: int, name: str) -> None:
        """Refuse a group size that does not divide the input width `columns` of module `name`."""
        if self.group_size is not None and columns % self.group_size:
            divisors = [g for g in (128, 64, 32, 16) if columns % g == 0]
            hint = f"a divisor such as {divisors[0]}" if divisors else "a divisor of it"
            raise ConfigError(f"Group size {self.group_size} does not divide the input width {columns} of {name}; "
                              f"choose {hint}, or 'channel'.")

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def torch_scale_dtype(self) -> torch.dtype:
        return SCALE_DTYPES[self.scale_dtype]

    def label(self) -> str:
        """Short words for tables and progress: 'GPTQ 4-bit, groups of 64, symmetric, static activation order'
        (GPTQ names its column order; RTN has none)."""
        grouping = f"groups of {self.group_size}" if self.group_size else "per channel"
        order = ""
        if self.method == "gptq":
            order = ", static activation order" if self.actorder == "static" else ", natural column order"
        return (f"{self.method.upper()} {self.bits}-bit, {grouping}, "
                f"{'symmetric' if self.symmetric else 'asymmetric'}{order}")

    def to_dict(self) -> dict:
        return asdict(self)


def parse_group_size(text: Union[str, int, None]) -> Optional[int]:
    """'channel' (or None) -> None; '64' -> 64; anything else is refused in one sentence."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("channel", "per-channel", "")):
        return None
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"Group size '{text}' is not understood; give a number of input weights such as 64 or "
                          "32, or 'channel'.") from None
    if value < 1:
        raise ConfigError(f"Group size {value} is not a positive integer; give e.g. 64 or 32, or 'channel'.")
    return value

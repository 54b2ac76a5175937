"""The techniques a frontier is made of, written as short words a command line takes.

    dense                       the dense model (always measured)
    wanda:0.5  sparsegpt:2:4    pruning (a sweep point: a method and a sparsity or an N:M structure)
    structured:0.2              structured pruning: 20 % of decoder parameters (heads and MLP channels) removed
    gptq:4:64  rtn:4:32:asym    weight quantization: method, bits, group size ("channel" = per output channel),
    gptq:8:channel              and "asym" for an integer zero point (default symmetric)
    structured:0.2+gptq:4:channel  quantize the structurally pruned model (per channel: removing MLP channels
                                leaves widths that groups of 64 need not divide)
    sparsegpt:0.5+gptq:4:64     SparseGPT pruning and GPTQ in one sweep (as the SparseGPT paper does)

`STANDARD` is the set `prunescope frontier` measures by default: what issue #27's target asks of the embedded
model (dense, 8-bit, 4-bit per channel and in groups, 3-bit, Wanda/SparseGPT 50 % and 2:4, structured 20-30 %,
structured + 4-bit, SparseGPT 50 % + 4-bit), plus GPTQ 4-bit symmetric in groups of 32 and RTN 4-bit asymmetric in
groups of 32: the layouts of GGUF's Q4_0 and Q4_1, written exactly from their integers, so `--runtime-speed` times
their own files in llama.cpp (GPTQ's Q4_0 point is the default frontier's GPTQ point llama.cpp runs). An 8-bit
group-of-32 GPTQ point (Q8_0) is left out: it costs another GPTQ pass, minutes on the embedded model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pruning_core.errors import ConfigError
from pruning_core.masks import parse_structure
from pruning_core.methods import METHODS
from pruning_core.quantization.scheme import METHODS as QUANT_METHODS
from pruning_core.quantization.scheme import QuantScheme, parse_group_size

STANDARD: tuple[str, ...] = (
    "dense",
    "gptq:8:channel", "gptq:4:channel", "gptq:4:64", "gptq:4:32", "rtn:4:32:asym", "gptq:3:64", "gptq:3:channel",
    "wanda:0.5", "sparsegpt:0.5", "wanda:2:4", "sparsegpt:2:4",
    "structured:0.2", "structured:0.3",
    "structured:0.2+gptq:4:channel", "sparsegpt:0.5+gptq:4:64",
)


@dataclass(frozen=True)
class Technique:
    """One parsed technique: `prune` (method, sparsity, structure) and/or `structured` (ratio) and/or `quantize`
    (a `QuantScheme`); none of them for "dense"."""

    text: str
    prune: Optional[tuple[str, float, str]] = None
    structured: Optional[float] = None
    quantize: Optional[QuantScheme] = None

    @property
    def joint(self) -> Optional[str]:
        """The quantizer's `prune` argument ('sparsegpt:0.5', 'sparsegpt:2:4') of a pruned + quantized technique."""
        if self.prune is None or self.quantize is None:
            return None
        method, sparsity, structure = self.prune
        return f"{method}:{structure}" if structure != "unstructured" else f"{method}:{sparsity:g}"


def _prune(text: str) -> tuple[str, float, str]:
    method, _, rest = text.partition(":")
    if method not in METHODS:
        raise ConfigError(f"Technique '{text}': unknown method '{method}'; use one of {', '.join(METHODS)}.")
    if ":" in rest:
        structure = parse_structure(rest)
        return method, float(structure.sparsity), str(structure)
    try:
        sparsity = float(rest)
    except ValueError:
        raise ConfigError(f"Technique '{text}' needs a sparsity, e.g. {method}:0.5 or {method}:2:4.") from None
    if not 0.0 < sparsity < 1.0:
        raise ConfigError(f"Technique '{text}': sparsity {sparsity:g} is outside (0, 1).")
    return method, sparsity, "unstructured"


def _quantize(text: str) -> QuantScheme:
    parts = text.split(":")
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] not in ("asym", "sym")):
        raise ConfigError(f"Technique '{text}' is not a quantization; write method:bits:group[:asym], e.g. "
                          "gptq:4:64, gptq:8:channel or rtn:4:32:asym.")
    try:
        bits = int(parts[1])
    except ValueError:
        raise ConfigError(f"Technique '{text}': bits '{parts[1]}' is not an integer.") from None
    return QuantScheme(bits, parse_group_size(parts[2]), len(parts) == 3 or parts[3] == "sym", parts[0]).validate()


def parse_technique(text: str) -> Technique:
    """One technique from its words (see the module docstring); ConfigError names what is wrong."""
    words = str(text).strip().lower().replace(" ", "")
    if words == "dense":
        return Technique("dense")
    parts = words.split("+")
    if len(parts) > 2:
        raise ConfigError(f"Technique '{text}' combines more than two steps; combine one pruning and one "
                          "quantization, e.g. structured:0.2+gptq:4:64.")
    prune = structured = quantize = None
    for part in parts:
        head = part.split(":")[0]
        if head == "structured":
            try:
                structured = float(part.split(":")[1])
            except (IndexError, ValueError):
                raise ConfigError(f"Technique '{part}' needs a ratio, e.g. structured:0.2.") from None
            if not 0.0 < structured < 1.0:
                raise ConfigError(f"Technique '{part}': ratio {structured:g} is outside (0, 1).")
        elif head in QUANT_METHODS:
            quantize = _quantize(part)
        elif head in METHODS:
            prune = _prune(part)
        else:
            raise ConfigError(f"Technique '{part}' is unknown; use dense, a pruning (wanda:0.5, sparsegpt:2:4), "
                              "structured:0.2, a quantization (gptq:4:64, rtn:4:32:asym) or one of each joined by +.")
    if len(parts) == 2 and quantize is None:
        raise ConfigError(f"Technique '{text}' combines two prunings; combine a pruning with a quantization.")
    if prune is not None and quantize is not None:
        if prune[0] != "sparsegpt" or quantize.method != "gptq":
            raise ConfigError(f"Technique '{text}': pruning and quantizing in one sweep is SparseGPT with GPTQ, "
                              "e.g. sparsegpt:0.5+gptq:4:64.")
    return Technique(words, prune, structured, quantize)


def parse_techniques(texts) -> list[Technique]:
    """A list of techniques (a comma-separated string, or a list), each once, "dense" always first."""
    items = [t for t in (texts.split(",") if isinstance(texts, str) else texts) if str(t).strip()]
    parsed = [parse_technique(t) for t in items]
    unique = list({t.text: t for t in [Technique("dense"), *parsed]}.values())
    return unique


def technique_words(point) -> Optional[str]:
    """The technique words (`parse_technique`'s) that would measure a frontier point (a `FrontierPoint` or its
    dict), or None where none does (a smaller dense model, a quantized mask or folder from elsewhere)."""
    as_dict = point if isinstance(point, dict) else point.to_dict()
    own = (as_dict.get("source") or {}).get("technique")
    if own:
        return own
    family, setting = as_dict["family"], as_dict.get("setting") or {}
    if family == "dense":
        return "dense"
    if family in ("unstructured", "N:M"):
        if setting.get("allocation", "uniform") != "uniform":
            return None
        structure = setting.get("structure", "unstructured")
        return (f"{setting['method']}:{structure}" if structure != "unstructured"
                else f"{setting['method']}:{float(setting.get('target_sparsity', setting.get('sparsity'))):g}")
    if family == "structured":
        return f"structured:{float(setting['ratio']):g}"
    if family in ("quantized", "pruned + quantized") and setting.get("start") in ("dense", "joint"):
        scheme = (f"{setting['method']}:{setting['bits']}:{setting.get('group_size') or 'channel'}"
                  + ("" if setting.get("symmetric", True) else ":asym"))
        prune = setting.get("prune")
        if not prune:
            return scheme
        structure = prune.get("structure") or "unstructured"
        amount = structure if structure != "unstructured" else f"{float(prune['sparsity']):g}"
        return f"{prune.get('method', 'sparsegpt')}:{amount}+{scheme}"
    return None

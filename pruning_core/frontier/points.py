"""A frontier point: one technique's model as files a runtime loads (bytes measured on them) and its perplexity.

A point is built from what a capability stored, never recomputed here:
- the dense model: its 16-bit safetensors files (a quantization record's or the sizes module's measurement);
- a pruned sweep point (unstructured or N:M): saved the ordinary way it stores its zeros, so its 16-bit file is
  exactly as large as the dense model's (no serving runtime loads sparse weights any more); its bytes are the
  dense model's measured files, and the point says so;
- a structured point: the smaller model's 16-bit safetensors files, measured;
- a quantized point (`quantization.run.quantized_record`): the compressed-tensors folder, measured, and where its
  exact GGUF file was written and measured too (bytes["gguf"], from its integers: Q4_0, Q4_1, Q8_0) that file as a
  second format; started from the dense model, a pruned mask, a structured folder, or with SparseGPT pruning in the
  same sweep.
A point's size on the frontier is its smallest format (`FrontierPoint.format`), with the runtimes that load it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from pruning_core.sizes.files import FORMATS, format_label

SIXTEEN_BIT = "safetensors-16bit"
COMPRESSED_TENSORS = "compressed-tensors"
GGUF = "gguf"

#: Families of techniques: each its own marker on the chart (and its own legend entry).
FAMILIES = ("dense", "smaller dense", "quantized", "unstructured", "N:M", "structured", "structured + quantized",
            "pruned + quantized")

#: Why a pruned point's bytes are the dense model's: said wherever such a point is listed.
ZEROS_STORED = ("saved the ordinary way a pruned model stores its zeros, so its 16-bit file is exactly the dense "
                "model's size (measured on the dense model's files)")


@dataclass(frozen=True)
class FrontierPoint:
    """One model on the frontier.

    key: what identifies the technique and setting (equal keys are the same measurement; the newest is kept).
    technique: words for tables and hovers ("GPTQ 4-bit, groups of 64, symmetric"). family: one of `FAMILIES`.
    setting: what reproduces it (a quantization scheme, a sweep setting, a structured ratio...).
    sizes: {format id (`sizes.files.FORMATS`): {"weight_bytes", "total_bytes", "label", ...}} measured on files.
    ppl: {corpus: perplexity}. source: where it came from ({"kind": "sweep" | "structured" | "quantized" |
    "dense", "job": job id or None, ...}). note: a sentence to show beside its figures (the embedded model's Q4_1
    origin beside a 4-bit figure; why a pruned file is the dense size). bits: the integer width of its weights
    (16 when not quantized). sparsity: zeros / elements of its pruned linears (0 when not pruned).
    speed: its speed measured in a runtime and read from the store (`gguf.runtime_speed.speed_fields`: runtime,
    machine, prefill and decode tokens/s, the file measured), or None: not measured in a runtime.
    """

    key: str
    technique: str
    family: str
    setting: dict
    sizes: dict
    ppl: dict
    source: dict = field(default_factory=dict)
    note: Optional[str] = None
    bits: int = 16
    sparsity: float = 0.0
    speed: Optional[dict] = None

    @property
    def format(self) -> str:
        """The format id of the smallest measured files (ties: 16-bit safetensors first, the plainest)."""
        return min(self.sizes, key=lambda f: (int(self.sizes[f]["weight_bytes"]), f != SIXTEEN_BIT))

    @property
    def bytes(self) -> int:
        """The weight files' bytes of the smallest format, measured on disk."""
        return int(self.sizes[self.format]["weight_bytes"])

    @property
    def runtimes(self) -> tuple[str, ...]:
        """The runtimes that load the smallest format (a record's own list where it differs from the format's)."""
        own = self.sizes[self.format].get("runtimes")
        return tuple(own) if own else FORMATS[self.format][1]

    def format_words(self) -> str:
        """'compressed-tensors 4-bit (loaded by transformers, vLLM)' or '16-bit safetensors (loaded by ...)'."""
        if self.format == COMPRESSED_TENSORS:
            return f"compressed-tensors {self.bits}-bit (loaded by {', '.join(self.runtimes)})"
        if self.format == GGUF and self.sizes[GGUF].get("type"):
            return f"GGUF {self.sizes[GGUF]['type']} (loaded by {', '.join(self.runtimes)})"
        if self.sizes[self.format].get("runtimes"):
            return f"{FORMATS[self.format][0]} (loaded by {', '.join(self.runtimes)})"
        return format_label(self.format)

    def to_dict(self) -> dict:
        """The point as frontier.json writes it, with its chosen format, bytes and runtimes."""
        return {**asdict(self), "format": self.format, "bytes": self.bytes, "runtimes": list(self.runtimes),
                "format_words": self.format_words()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FrontierPoint":
        names = {"key", "technique", "family", "setting", "sizes", "ppl", "source", "note", "bits", "sparsity",
                 "speed"}
        return cls(**{k: v for k, v in d.items() if k in names})


def _size(record: Mapping[str, Any], fmt: str) -> dict:
    """The fields of a measurement a point keeps (the files list is long and stays in the source record)."""
    keep = {k: record[k] for k in ("weight_bytes", "total_bytes", "dtype", "type", "runtimes", "runtime_note")
            if record.get(k) is not None}
    return {**keep, "label": record.get("label") or format_label(fmt)}


def dense_point(ppl: Mapping[str, float], sixteen_bit: Mapping[str, Any], source: Optional[dict] = None,
                name: str = "dense", family: str = "dense") -> FrontierPoint:
    """The dense model (or, with family "smaller dense", a smaller model of the same family) as 16-bit
    safetensors. sixteen_bit: a measurement of its files ({"weight_bytes", ...})."""
    return FrontierPoint(key=f"{family}:{name}", technique=f"{name} (16-bit)", family=family,
                         setting={"model": name}, sizes={SIXTEEN_BIT: _size(sixteen_bit, SIXTEEN_BIT)},
                         ppl={c: float(v) for c, v in ppl.items()}, source=dict(source or {"kind": "dense"}))


def _method_name(method: str) -> str:
    return {"wanda": "Wanda", "sparsegpt": "SparseGPT", "magnitude": "magnitude"}.get(method, method)


def sweep_point(point: Mapping[str, Any], dense_sixteen_bit: Mapping[str, Any],
                source: Optional[dict] = None) -> FrontierPoint:
    """A pruned sweep point (`analysis.sweep.run_sweep`'s point): its bytes are the dense model's 16-bit files
    (`ZEROS_STORED`)."""
    structure = str(point.get("structure") or "unstructured")
    allocation = str(point.get("allocation") or "uniform")
    nm = structure != "unstructured"
    amount = structure if nm else f"{float(point['sparsity']):.0%}"
    plan = "" if allocation == "uniform" else f", {allocation} plan"
    technique = f"{_method_name(point['method'])} {amount}{plan}"
    key = f"sweep:{point['method']}:{structure}:{allocation}:{round(float(point.get('target_sparsity') or point['sparsity']), 4)}"
    return FrontierPoint(key=key, technique=technique, family="N:M" if nm else "unstructured",
                         setting={"method": point["method"], "structure": structure, "allocation": allocation,
                                  "sparsity": float(point["sparsity"]),
                                  "target_sparsity": float(point.get("target_sparsity") or point["sparsity"])},
                         sizes={SIXTEEN_BIT: _size(dense_sixteen_bit, SIXTEEN_BIT)},
                         ppl={c: float(v) for c, v in point["ppl"].items()},
                         source=dict(source or {"kind": "sweep"}), note=f"Pruned: {ZEROS_STORED}.",
                         sparsity=float(point["sparsity"]))


def structured_point(point: Mapping[str, Any], sixteen_bit: Mapping[str, Any],
                     source: Optional[dict] = None) -> FrontierPoint:
    """A structured point (`structured.run.run_structured`'s point) with the measurement of its smaller model's
    16-bit safetensors files (`sixteen_bit`)."""
    ratio = float(point["measured_ratio"])
    config = point.get("config") or {}
    units = "+".join(config.get("units") or [])
    return FrontierPoint(key=f"structured:{units}:{config.get('score')}:{point.get('allocation', 'uniform')}:"
                             f"{round(float(point['ratio']), 4)}",
                         technique=f"structured {ratio:.0%} of decoder parameters removed",
                         family="structured",
                         setting={"ratio": float(point["ratio"]), "measured_ratio": ratio, "units": config.get("units"),
                                  "score": config.get("score"), "allocation": point.get("allocation", "uniform")},
                         sizes={SIXTEEN_BIT: _size(sixteen_bit, SIXTEEN_BIT)},
                         ppl={c: float(v) for c, v in point["ppl"].items()}, source=dict(source or {"kind": "structured"}))


def _joint_words(prune: Optional[Mapping[str, Any]]) -> str:
    if not prune:
        return ""
    structure = prune.get("structure") or "unstructured"
    amount = structure if structure != "unstructured" else f"{float(prune['sparsity']):.0%}"
    return f"{_method_name(prune.get('method', 'sparsegpt'))} {amount} + "


def quantized_point(record: Mapping[str, Any], source: Optional[dict] = None,
                    start_words: Optional[str] = None) -> FrontierPoint:
    """A quantized point (`quantization.run.quantized_record`): both its measured formats (the compressed-tensors
    folder and the same model as 16-bit safetensors), its Q4_1 note for the embedded model.

    start_words: how to name its starting model when not dense ("structured 20 %", "Wanda 50 % mask")."""
    setting = dict(record["setting"])
    start = setting.get("start", "dense")
    # GPTQ records stored before static activation ordering existed (no "actorder") swept in natural order; pruning
    # in the sweep always does (its N:M groups are natural columns), so there the order is not a choice to name.
    natural = setting.get("method") == "gptq" and setting.get("actorder", "none") == "none" and start != "joint"
    scheme = (f"{str(setting['method']).upper()} {setting['bits']}-bit, "
              + (f"groups of {setting['group_size']}" if setting.get("group_size") else "per channel")
              + (", symmetric" if setting.get("symmetric", True) else ", asymmetric")
              # GPTQ's default column order (static activation order) goes unsaid; the other one is named.
              + (", natural column order" if natural else ""))
    family = {"dense": "quantized", "structured": "structured + quantized"}.get(start, "pruned + quantized")
    prefix = (f"{start_words} + " if start_words else
              _joint_words(setting.get("prune")) if start == "joint" else
              "pruned mask + " if start == "mask" else "structured + " if start == "structured" else "")
    # Only the quantized folder and the exact GGUF file are this technique's own files: the 16-bit copy of a
    # quantized record is its starting model (the dense, pruned or structured model), a point of its own, and a
    # re-rounded GGUF file holds other weights than the ones evaluated.
    sizes = {COMPRESSED_TENSORS: _size(record["bytes"][COMPRESSED_TENSORS], COMPRESSED_TENSORS)}
    gguf = record["bytes"].get(GGUF)
    if gguf and gguf.get("exact", True) and not gguf.get("re_rounded"):
        sizes[GGUF] = _size(gguf, GGUF)
    note = record.get("note")
    if note and _is_q4_1_layout(setting):
        note = ("4 bits in groups of 32 with a zero point is the layout of the Q4_1 GGUF the embedded model's "
                "weights came from (Q4_1 keeps a 16-bit minimum per group where compressed-tensors keeps an integer "
                "zero point), so this point says little about how 4 bits treat a model trained in 16 bits. " + note)
    key = ("quantized:" + start + ":" + (start_words or "") + ":" + str((setting.get("prune") or {}).get("structure"))
           + ":" + str((setting.get("prune") or {}).get("sparsity")) + ":"
           + ":".join(str(setting.get(k)) for k in ("method", "bits", "group_size", "symmetric", "scale_dtype"))
           + (":natural" if natural else ""))
    return FrontierPoint(key=key, technique=prefix + scheme, family=family, setting=setting, sizes=sizes,
                         ppl={c: float(v) for c, v in record["ppl"].items()},
                         source=dict(source or {"kind": "quantized"}), note=note, bits=int(setting["bits"]),
                         sparsity=float(record.get("sparsity") or 0.0))


def _is_q4_1_layout(setting: Mapping[str, Any]) -> bool:
    """4 bits, groups of 32, asymmetric: the layout of GGUF's Q4_1 (a scale and a minimum per 32 weights)."""
    return int(setting.get("bits", 0)) == 4 and setting.get("group_size") == 32 and not setting.get("symmetric", True)


def sixteen_bit_of(record: Mapping[str, Any]) -> Optional[dict]:
    """The 16-bit safetensors measurement a quantized record holds of its starting model (None if absent)."""
    return (record.get("bytes") or {}).get(SIXTEEN_BIT)

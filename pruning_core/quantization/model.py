"""Quantize a whole model: every prunable linear of every decoder layer, through THE layer walk.

GPTQ needs each linear's input Hessian 2 X X^T / n: `walk.walk_layers` collects it (need="hessian") exactly as
for SparseGPT, the handler quantizes the layer's linears (those reading one input together, one OBS sweep) and
writes the dequantized weights in, and the next layer's statistics are measured on the quantized model (the
papers' sequential protocol, "pruned" propagation). RTN needs no data and no walk. The model's weights are
restored on return: the result holds the integers and scales (`QuantizedMatrix`, for the export) and the
dequantized weights and keep masks (`masks`, `weights`: what `evaluate.evaluate_setting` applies, so the
quantized model is measured by THE evaluation like any pruned one).

Three starting points share this call: the dense model; a pruned model (`keep`: its keep masks, from a mask
export; zeros stay zero, only kept weights are quantized); a structurally pruned model (just another loaded
model). `prune` adds SparseGPT pruning in the same sweep (joint pruning and quantization, as the SparseGPT
paper does). The embedding and the LM head stay 16-bit (as llm-compressor's recipes leave `lm_head`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch

from pruning_core.errors import ConfigError
from pruning_core.masks import parse_structure
from pruning_core.methods import MethodOptions
from pruning_core.models import LoadedModel, is_transposed, to_native, weight_matrix
from pruning_core.packed_masks import PackedMasks
from pruning_core.progress import ProgressFn, no_progress
from pruning_core.quantization.quantizer import QuantizedMatrix, gptq_group, round_to_nearest
from pruning_core.quantization.scheme import QuantScheme
from pruning_core.stats import LayerStatistics
from pruning_core.walk import capture_layer_inputs, walk_layers

#: The pruning method that can share the quantizer's sweep (its OBS update is GPTQ's).
JOINT_METHODS = ("sparsegpt",)


@dataclass(frozen=True)
class JointPruning:
    """Pruning done in the same OBS sweep as GPTQ: `sparsity` (fraction of zeros) and `structure`
    ("unstructured" or N:M, whose sparsity is then 1 - N/M)."""

    method: str = "sparsegpt"
    sparsity: float = 0.5
    structure: str = "unstructured"

    def to_dict(self) -> dict:
        return {"method": self.method, "sparsity": self.sparsity, "structure": self.structure}


def parse_joint_pruning(text: Optional[str]) -> Optional[JointPruning]:
    """'sparsegpt:0.5' -> 50 % unstructured; 'sparsegpt:2:4' -> 2:4; None/'' -> None; else one sentence."""
    if not text:
        return None
    method, _, rest = str(text).partition(":")
    method = method.strip().lower()
    if method not in JOINT_METHODS:
        raise ConfigError(f"--prune '{text}' names method '{method}'; pruning in the quantizer's sweep is "
                          f"{' or '.join(JOINT_METHODS)} (e.g. sparsegpt:0.5 or sparsegpt:2:4); for another method "
                          "export its mask and pass --mask DIR.")
    if ":" in rest:
        structure = parse_structure(rest)
        return JointPruning(method, float(structure.sparsity), str(structure))
    try:
        sparsity = float(rest)
    except ValueError:
        raise ConfigError(f"--prune '{text}' needs a sparsity after the method, e.g. sparsegpt:0.5 or "
                          "sparsegpt:2:4.") from None
    if not 0.0 < sparsity < 1.0:
        raise ConfigError(f"--prune sparsity {sparsity:g} is outside (0, 1); give a fraction such as 0.5.")
    return JointPruning(method, sparsity, "unstructured")


@dataclass
class QuantizeResult:
    """A quantized model, held beside the unchanged model.

    matrices: qualified name -> `QuantizedMatrix` ((out, in) layout). masks: name -> keep mask (native layout,
    all True where nothing is pruned); weights: name -> dequantized weights (native layout, exact zeros where
    pruned): the pair `evaluate.evaluate_setting` and `masks.applied_masks` apply. sparsity: zeros / elements over
    the quantized linears. seconds: wall seconds of the quantization (walk included).
    """

    scheme: QuantScheme
    matrices: dict[str, QuantizedMatrix]
    masks: Mapping[str, torch.Tensor]  # a `packed_masks.PackedMasks` from `quantize_model`
    weights: dict[str, torch.Tensor]
    sparsity: float = 0.0
    seconds: float = 0.0
    joint: Optional[JointPruning] = None
    extra: dict = field(default_factory=dict)


def check_widths(loaded: LoadedModel, scheme: QuantScheme) -> None:
    """Refuse, before any work, a group size that does not divide some quantized linear's input width."""
    for name, module in loaded.adapter.prunable_modules(loaded.model).items():
        scheme.check_width(int(weight_matrix(module).shape[1]), name)


def _quantize_layer(loaded: LoadedModel, index: int, layer, stats_by_kind: Mapping, scheme: QuantScheme,
                    options: MethodOptions, keep: Optional[Mapping[str, torch.Tensor]],
                    joint: Optional[JointPruning], result: QuantizeResult, write: bool) -> None:
    """Quantize one layer's linears into `result` (and write the dequantized weights in when `write`)."""
    linears = loaded.adapter.layer_linears(layer)
    names = {kind: loaded.adapter.qualified_name(index, kind) for kind in linears}

    def keep_matrix(kind: str) -> Optional[torch.Tensor]:  # (out, in) bool, the methods' layout
        if keep is None or names[kind] not in keep:
            return None
        mask = keep[names[kind]].to(torch.bool)
        return mask.t() if is_transposed(linears[kind]) else mask

    found: dict[str, tuple[Optional[torch.Tensor], QuantizedMatrix]] = {}
    if scheme.method == "rtn":
        for kind, module in linears.items():
            found[kind] = keep_matrix(kind), round_to_nearest(weight_matrix(module).detach(), scheme, keep_matrix(kind))
    else:
        groups: dict[int, list[str]] = {}
        for kind in linears:  # linears reading one input share one statistics object: one sweep for them
            groups.setdefault(id(stats_by_kind[kind]), []).append(kind)
        structure = parse_structure(joint.structure) if joint is not None else parse_structure("unstructured")
        for kinds in groups.values():
            sources = [weight_matrix(linears[k]).detach().to(torch.float32) for k in kinds]
            masks = [keep_matrix(k) for k in kinds]
            fixed = None if all(m is None for m in masks) else [
                m if m is not None else torch.ones_like(s, dtype=torch.bool) for m, s in zip(masks, sources)]
            outcomes = gptq_group(sources, stats_by_kind[kinds[0]], scheme, options, keep=fixed,
                                  sparsities=[joint.sparsity] * len(kinds) if joint is not None else None,
                                  structure=structure)
            for k, (mask, matrix) in zip(kinds, outcomes):
                found[k] = (mask if (fixed is not None or joint is not None) else None), matrix
    for kind, (mask, matrix) in found.items():
        module, name = linears[kind], names[kind]
        values = matrix.dequantize()                                       # (out, in) fp32
        result.matrices[name] = matrix
        result.weights[name] = to_native(module, values)
        result.masks[name] = to_native(module, mask if mask is not None else torch.ones_like(values, dtype=torch.bool))
        if write:
            with torch.no_grad():
                weight_matrix(module).copy_(values.to(module.weight.dtype))


def quantize_model(loaded: LoadedModel, calibration_ids: Optional[torch.Tensor], scheme: QuantScheme, *,
                   keep: Optional[Mapping[str, torch.Tensor]] = None, joint: Optional[JointPruning] = None,
                   options: MethodOptions = MethodOptions(), batch_size: int = 8,
                   progress: Optional[ProgressFn] = None, calib_dtype: str = "float32") -> QuantizeResult:
    """Quantize every prunable linear of `loaded` with `scheme`; the model is left as it was (see the module
    docstring). calibration_ids: (n, seqlen) windows, needed by GPTQ. keep: keep masks by qualified name (a pruned
    model's). joint: SparseGPT pruning in the same sweep (GPTQ only). calib_dtype: compute dtype of the walk's
    calibration forwards ("float32" or "bfloat16" autocast; the Hessians are accumulated in fp32 either way)."""
    progress = progress or no_progress
    scheme = scheme.validate()
    check_widths(loaded, scheme)
    if joint is not None and scheme.method != "gptq":
        raise ConfigError("Pruning in the quantizer's sweep needs --method gptq (it is one OBS sweep); with rtn, "
                          "prune first, export the mask and pass --mask DIR.")
    if joint is not None and keep is not None:
        raise ConfigError("Give either a mask (--mask) or pruning in the sweep (--prune), not both.")
    start = time.perf_counter()
    result = QuantizeResult(scheme, {}, PackedMasks(), {}, joint=joint)  # masks held 8 weights per byte
    layers = loaded.adapter.decoder_layers(loaded.model)
    if scheme.method == "rtn":
        for index, layer in enumerate(layers):
            _quantize_layer(loaded, index, layer, {}, scheme, options, keep, None, result, write=False)
            progress((index + 1) / len(layers), f"layer {index + 1}/{len(layers)}: round to nearest")
    else:
        if calibration_ids is None:
            raise ConfigError("GPTQ needs calibration data; choose a calibration corpus (or --method rtn).")
        progress(0.0, "capturing layer-0 inputs")
        inputs = capture_layer_inputs(loaded, calibration_ids, batch_size)

        def on_layer(index: int, layer, stats: LayerStatistics) -> bool:
            _quantize_layer(loaded, index, layer, stats.by_kind, scheme, options, keep, joint, result, write=True)
            return True

        # The walk writes each layer's quantized weights in and restores the layer once its outputs are recomputed.
        walk_layers(loaded, inputs, on_layer, need="hessian", propagation="pruned", progress=progress,
                    always_changes=True, restore_each_layer=True, dtype=calib_dtype)
    zeros = sum(int((~m).sum()) for m in result.masks.values())
    total = sum(m.numel() for m in result.masks.values())
    result.sparsity = zeros / max(total, 1)
    result.seconds = time.perf_counter() - start
    return result

"""The quantized model as files a runtime loads, and their sizes measured on disk.

`write_compressed_tensors` writes the compressed-tensors "pack-quantized" folder with the compressed-tensors
library itself, the way llm-compressor does: the quantization config is applied to a 16-bit copy of the model
(`apply_quantization_config`), each quantized linear gets its weights, scales (and zero points) from the
`QuantizeResult`, `ModelCompressor.compress_model` packs the integers into int32, `save_pretrained` writes the
safetensors and `update_config` the `quantization_config` in config.json. The config's `sparsity_config` entry
(which `update_config` writes empty) is removed: since compressed-tensors 0.15 no sparse compressor exists and
current vLLM rejects a sparsity config, so a pruned model's zeros are stored as ordinary quantized zeros.

`write_16bit` writes the same starting model, unquantized, as 16-bit safetensors: the baseline file size.
`reload_check` loads the folder with plain `AutoModelForCausalLM.from_pretrained` on the CPU and measures it with
THE evaluation; `packed_weights_check` decompresses every packed tensor with compressed-tensors' own decompressor
and compares it with the in-memory quantized weights.

Known loader limit (transformers 5.25 with compressed-tensors 0.20.1): an *asymmetric* pack-quantized folder does
not load with plain `from_pretrained`. Before reading weights, transformers' compressed-tensors quantizer shapes
the empty model by running the packed compressor's `compress` on meta tensors, and that meta path
(`PackedQuantizationCompressor.compress`, `weight.device.type == "meta"`) does not pack the zero point, while the
real path packs it along the output dimension (`pack_to_int32(zero_point, bits, packed_dim=0)`): the checkpoint's
`weight_zero_point` is (out * bits / 32, groups) against the model's (out, groups), a size mismatch transformers
refuses (llm-compressor issue #1618, "Transformers can't load quantized model when symmetric is False"). vLLM
reads the packed zero points; transformers' load-time dequantization (`CompressedTensorsConfig(dequantize=True)`)
never runs that meta path and loads the folder. PruneScope records this sentence for asymmetric exports, reloads
them that way, and checks their packed integers with `packed_weights_check`.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Optional

import torch

from pruning_core.models import LoadedModel
from pruning_core.quantization.model import QuantizeResult
from pruning_core.quantization.scheme import QuantScheme
from pruning_core.sizes.files import format_label, saved_size

#: The compressed-tensors format PruneScope writes: integers packed into int32, weight-only.
PACK_FORMAT = "pack-quantized"

ASYMMETRIC_LOAD_NOTE = (
    "plain transformers (5.25, with compressed-tensors 0.20.1) cannot load an asymmetric pack-quantized folder: "
    "compressed-tensors shapes the empty model without packing the zero points, so the packed checkpoint's "
    "weight_zero_point does not fit (llm-compressor issue #1618); vLLM reads the packed zero points, and "
    "transformers loads it with from_pretrained(folder, quantization_config=CompressedTensorsConfig(dequantize=True))")


def quantization_config(scheme: QuantScheme, ignore: list[str]):
    """The compressed-tensors `QuantizationConfig` of `scheme`: one group targeting Linear, `ignore` left out."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    args = QuantizationArgs(num_bits=scheme.bits, type="int", symmetric=scheme.symmetric,
                            strategy="group" if scheme.group_size else "channel", group_size=scheme.group_size,
                            dynamic=False)
    return QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=args)},
                              ignore=ignore, quantization_status="frozen", format=PACK_FORMAT)


def _sixteen_bit_copy(loaded: LoadedModel, dtype: torch.dtype):
    model = copy.deepcopy(loaded.model).to(dtype)
    if getattr(model.config, "quantization_config", None) is not None:  # a GGUF-loaded model's leftover
        del model.config.quantization_config
    return model


def _save_tokenizer(loaded: LoadedModel, folder: Path) -> None:
    if hasattr(loaded.tokenizer, "save_pretrained"):
        loaded.tokenizer.save_pretrained(str(folder))


def write_compressed_tensors(loaded: LoadedModel, result: QuantizeResult, folder) -> dict:
    """Write `result` as a compressed-tensors pack-quantized folder (weights, config, tokenizer) at `folder`.

    Non-quantized tensors (embeddings, norms, LM head) are stored in the scheme's 16-bit scale dtype. Returns
    {"format", "quantization_config" (as written in config.json)}.
    """
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    scheme = result.scheme
    dtype = scheme.torch_scale_dtype
    model = _sixteen_bit_copy(loaded, dtype)
    ignore = [name for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and name not in result.matrices]
    apply_quantization_config(model, quantization_config(scheme, ignore), show_progress=False)
    with torch.no_grad():
        for name, matrix in result.matrices.items():
            module = model.get_submodule(name)
            # fp32 weights: the compressor divides by the scale and rounds, which gives back exactly our integers.
            module.weight.data = result.weights[name].to(torch.float32)
            module.weight_scale.data = matrix.scale.to(dtype)
            if not scheme.symmetric:
                module.weight_zero_point.data = matrix.zero.to(module.weight_zero_point.dtype)
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=PACK_FORMAT)
    compressor.compress_model(model)
    model.save_pretrained(str(out))
    compressor.update_config(str(out))
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    qconfig = config["quantization_config"]
    for key in ("sparsity_config", "moe_sparsity_config"):  # vLLM rejects a sparsity config; none is meant
        qconfig.pop(key, None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    _save_tokenizer(loaded, out)
    return {"format": PACK_FORMAT, "quantization_config": qconfig}


def write_16bit(loaded: LoadedModel, folder, dtype: torch.dtype = torch.float16) -> None:
    """Write the (unquantized) model of `loaded` as 16-bit safetensors with its tokenizer."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    _sixteen_bit_copy(loaded, dtype).save_pretrained(str(out))
    _save_tokenizer(loaded, out)


def measured_sizes(loaded: LoadedModel, result: QuantizeResult, folder: Optional[Path]) -> dict:
    """Bytes per format, measured on files written here: {"compressed-tensors": {...}, "safetensors-16bit": {...}},
    each {"weight_bytes", "total_bytes", "files", "label" (the format and the runtimes that load it)}.
    folder: the written compressed-tensors folder (its files are measured); the 16-bit folder is written to a
    temporary folder, measured and removed (its zeros or removed structure are what it holds)."""
    sizes = {}
    if folder is not None:
        sizes["compressed-tensors"] = {**saved_size(folder), "label": format_label("compressed-tensors")}
    with tempfile.TemporaryDirectory(prefix="prunescope-16bit-") as tmp:
        write_16bit(loaded, tmp, result.scheme.torch_scale_dtype)
        sizes["safetensors-16bit"] = {**saved_size(tmp), "label": format_label("safetensors-16bit"),
                                      "dtype": result.scheme.scale_dtype}
    return sizes


def packed_weights_check(folder, result: QuantizeResult) -> dict:
    """Unpack every packed linear in `folder` with compressed-tensors' own `unpack_from_int32` and compare its
    integers, scales and zero points with the in-memory result: {"modules", "identical" (every integer, scale and
    zero point equal), "mismatched" (names that differ, at most 5)}."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from safetensors import safe_open

    scheme = result.scheme
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                if key.rsplit(".", 1)[0] in result.matrices:
                    tensors[key] = handle.get_tensor(key)
    mismatched = []
    for name, matrix in result.matrices.items():
        shape = tensors[f"{name}.weight_shape"]
        ints = unpack_from_int32(tensors[f"{name}.weight_packed"], scheme.bits, shape)
        same = (torch.equal(ints.to(torch.int8), matrix.ints)
                and torch.equal(tensors[f"{name}.weight_scale"].to(torch.float32), matrix.scale))
        if not scheme.symmetric:
            zero = unpack_from_int32(tensors[f"{name}.weight_zero_point"], scheme.bits, tuple(matrix.zero.shape),
                                     packed_dim=0)
            same = same and torch.equal(zero.to(torch.int8), matrix.zero)
        if not same:
            mismatched.append(name)
    return {"modules": len(result.matrices), "identical": not mismatched, "mismatched": mismatched[:5]}


def decompress_loaded(model) -> None:
    """Unpack a compressed-tensors model loaded by transformers now. transformers leaves the packed integers in
    place and decompresses on the model's first full forward (a pre-hook on the top module); PruneScope's
    evaluation runs the decoder's modules directly, so it calls the same decompression up front."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(model, "ct_decompress_hook"):
        quantizer.compressor.decompress_model(model)


def reload_check(folder, loaded: LoadedModel, protocol, corpora, eval_ids: Mapping[str, torch.Tensor],
                 in_memory_ppl: Mapping[str, float], progress=None) -> dict:
    """Load `folder` with transformers on the CPU and evaluate it: {"loadable_with_transformers" (plain
    `from_pretrained(folder)` loads it), "loaded_with" (the call used), "ppl", "max_relative_gap" (|reloaded /
    in-memory - 1|, worst corpus), "note"}. A symmetric folder loads with plain `from_pretrained(folder,
    dtype=float32)`; an asymmetric one cannot (see the module docstring) and is loaded with transformers'
    load-time dequantization (`CompressedTensorsConfig(dequantize=True)`), which skips the failing meta path."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    from pruning_core import evaluate

    config = json.loads((Path(folder) / "config.json").read_text())
    symmetric = config["quantization_config"]["config_groups"]["group_0"]["weights"].get("symmetric", True)
    if symmetric:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        decompress_loaded(model)
        how = "AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)"
    else:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=torch.float32, quantization_config=CompressedTensorsConfig(dequantize=True)).eval()
        how = ("AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, "
               "quantization_config=CompressedTensorsConfig(dequantize=True))")
    model.config.use_cache = False
    reloaded = LoadedModel(model, loaded.tokenizer, str(folder), f"{loaded.name} (compressed-tensors, reloaded)",
                           loaded.adapter)
    evaluation = evaluate.evaluate_setting(reloaded, protocol, corpora, evaluate.IN_PLACE, dense=False,
                                           eval_ids=eval_ids, progress=progress, label="reloaded")
    gaps = [abs(evaluation.pruned_ppl[c] / in_memory_ppl[c] - 1.0) for c in corpora]
    return {"loadable_with_transformers": bool(symmetric), "loaded_with": how, "ppl": evaluation.pruned_ppl,
            "max_relative_gap": max(gaps),
            "note": ("loaded with plain from_pretrained on the CPU" if symmetric else ASYMMETRIC_LOAD_NOTE)}


def remove_folder(folder) -> None:
    """Remove a folder written here for measuring only."""
    shutil.rmtree(folder, ignore_errors=True)

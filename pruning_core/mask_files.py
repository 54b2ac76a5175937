"""Export a pruning result in forms other tools use: re-applicable masks and a pruned model folder.

Masks (`save_masks` / `load_masks` / `apply_mask_dir`):
  * ``masks.safetensors``: one uint8 tensor per pruned module, named by its qualified module name
    (``model.layers.0.self_attn.q_proj``), holding ``numpy.packbits`` of the flattened keep-mask
    (True = kept, big-endian bit order, zero-padded to a whole byte). 8x smaller than a bool tensor.
    The safetensors metadata repeats each module's shape, so the file can be unpacked on its own.
  * ``manifest.json``: format version, method, structure, target and measured sparsity (overall and per
    module), the sparsity plan and its allocator (``allocator``, ``plan`` = `SparsityPlan.to_dict()` or null
    for a uniform sparsity, ``plan_digest``), model identity (name, source, weight fingerprint, per-module shapes), calibration corpus and
    protocol, library versions, and the sha256 of ``masks.safetensors`` (checked on load).

SparseGPT updates the weights it keeps; a keep-mask alone does not reproduce its pruned model. The manifest
says so (``weights_updated``); `save_pruned_model` writes the full pruned model for that case.

Pruned model (`save_pruned_model`): ``save_pretrained`` in safetensors plus the tokenizer, loadable with
``AutoModelForCausalLM.from_pretrained``; the in-memory model is restored afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from pruning_core.errors import ConfigError, PruneScopeError
from pruning_core.masks import applied_masks, measured_sparsity, sparsity_of
from pruning_core.models import LoadedModel
from pruning_core.packed_masks import PackedMasks, mask_shape, pack_bits, packed_length, unpack_bits

MASK_FILE = "masks.safetensors"
MANIFEST_FILE = "manifest.json"
FORMAT = "prunescope-masks"
FORMAT_VERSION = 1
WEIGHTS_UPDATED_NOTE = (
    "This method updated the kept weights (SparseGPT's reconstruction); those updated weights are part of "
    "the pruned model, not of this mask. Applying the mask to the dense model zeroes the same weights but "
    "does not reproduce the method's perplexity: use the saved pruned model (--save-model) for that."
)
MASK_ONLY_NOTE = ("This method only zeroes weights; applying the mask to the dense model reproduces the "
                  "pruned model exactly.")


# ------------------------------------------------------------------------------------------ bit packing

def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Bit-pack a bool keep-mask of any shape into a 1-D uint8 CPU tensor (ceil(numel / 8) bytes): the bits of
    ``numpy.packbits`` (big-endian, last byte zero-padded), computed with torch (`packed_masks.pack_bits`)."""
    return pack_bits(mask).cpu()


def unpack_mask(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of `pack_mask`: the bool tensor of `shape`."""
    count = int(np.prod(shape)) if len(shape) else 1
    expected = packed_length(count)
    if packed.numel() != expected:
        raise ConfigError(f"A packed mask has {packed.numel()} bytes but shape {tuple(shape)} needs {expected}; "
                          "the mask file is damaged or was edited.")
    return unpack_bits(packed.cpu().to(torch.uint8), tuple(shape))


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ masks

def manifest_info_for(loaded: LoadedModel, prune_result, protocol=None) -> dict:
    """The manifest fields describing a result: setting, model identity, protocol, calibration corpus."""
    from pruning_core.provenance import library_versions

    config = prune_result.config
    plan = config.plan
    info = {
        "method": config.method,
        "structure": config.structure,
        "target_sparsity": config.effective_sparsity,
        "layer_sparsity": {str(k): v for k, v in (config.layer_sparsity or {}).items()} or None,
        # The plan, so the same per-module sparsities can be re-made or edited; its global sparsity by
        # parameters is target_sparsity. A plain sparsity is "uniform", per-layer overrides "edited".
        "allocator": plan.allocator if plan is not None else ("edited" if config.layer_sparsity else "uniform"),
        "plan": plan.to_dict() if plan is not None else None,
        "plan_digest": plan.digest() if plan is not None else None,
        "propagation": config.propagation,
        "weights_updated": prune_result.weights is not None,
        "model": {"name": loaded.name, "source": loaded.source, "fingerprint": loaded.fingerprint,
                  "family": loaded.adapter.family},
        "library_versions": library_versions(),
    }
    if protocol is not None:
        info["protocol"] = protocol.to_dict()
        info["calibration"] = {"corpus": protocol.calib, "column": protocol.calib_column}
        try:
            from pruning_core.protocol import corpus_key

            info["calibration"].update(corpus_key(protocol.calib, "calibration", protocol.calib_column))
        except PruneScopeError:
            pass
    return info


def save_masks(masks: Mapping[str, torch.Tensor], out_dir, manifest_info: dict | None = None) -> dict:
    """Write ``masks.safetensors`` and ``manifest.json`` into `out_dir`; returns the manifest dict.

    masks: qualified module name -> bool keep-mask in the module's native weight shape (True = kept).
    manifest_info: extra manifest fields (see `manifest_info_for`); ``model``, ``method``... are copied in.
    Measured sparsity per module and overall is computed here from the masks themselves.
    """
    from safetensors.torch import save_file

    if not masks:
        raise ConfigError("There are no masks to export; prune the model first.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = dict(manifest_info or {})
    # One mask unpacked at a time; a `PackedMasks` hands its bits over as they are (the same layout).
    packed = {name: masks.packed(name).cpu() if isinstance(masks, PackedMasks) else pack_mask(masks[name])
              for name in masks}
    shapes = {name: list(mask_shape(masks, name)) for name in masks}
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "bit_order": "big",
                "shapes": json.dumps(shapes)}
    mask_path = out / MASK_FILE
    tmp = out / (MASK_FILE + ".tmp")
    save_file(packed, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o644)  # safetensors creates the file private; a mask is meant to be shared
    os.replace(tmp, mask_path)

    per_module = {name: 1.0 - int(mask.sum()) / mask.numel() for name, mask in masks.items()}
    model_info = dict(info.pop("model", {}) or {})
    model_info["module_shapes"] = shapes
    weights_updated = bool(info.pop("weights_updated", False))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mask_file": MASK_FILE,
        "mask_sha256": file_sha256(mask_path),
        "encoding": "numpy.packbits of the flattened keep-mask (True = kept), big-endian bits, uint8; "
                    "unpack with numpy.unpackbits(x, count=prod(shape)).reshape(shape)",
        "method": info.pop("method", None),
        "structure": info.pop("structure", None),
        "target_sparsity": info.pop("target_sparsity", None),
        "measured_sparsity": {"overall": sparsity_of(masks), "per_module": per_module},
        "weights_updated": weights_updated,
        "weights_note": WEIGHTS_UPDATED_NOTE if weights_updated else MASK_ONLY_NOTE,
        "model": model_info,
        **info,
    }
    tmp_manifest = out / (MANIFEST_FILE + ".tmp")
    tmp_manifest.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(tmp_manifest, out / MANIFEST_FILE)
    return manifest


def load_masks(mask_dir) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a folder written by `save_masks`: (masks as bool tensors, manifest). Verifies the sha256."""
    from safetensors import safe_open

    folder = Path(mask_dir).expanduser()
    manifest_path = folder / MANIFEST_FILE
    mask_path = folder / MASK_FILE
    if not manifest_path.is_file() or not mask_path.is_file():
        raise ConfigError(f"'{mask_dir}' does not hold {MASK_FILE} and {MANIFEST_FILE}; give the folder written "
                          "by `prunescope export`.")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{manifest_path} is not valid JSON ({getattr(exc, 'msg', exc)}); re-export the mask.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(f"{manifest_path} is not a PruneScope mask manifest; re-export the mask.")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{manifest_path} has mask format version {manifest.get('format_version')!r}, but this "
                          f"PruneScope reads version {FORMAT_VERSION}; re-export the mask with this version.")
    actual = file_sha256(mask_path)
    if actual != manifest.get("mask_sha256"):
        raise ConfigError(f"{mask_path} has sha256 {actual[:16]}... but the manifest expects "
                          f"{str(manifest.get('mask_sha256'))[:16]}...; the file was changed or damaged, re-export it.")
    model_info = manifest.get("model")
    shapes = model_info.get("module_shapes") if isinstance(model_info, dict) else None
    if not isinstance(shapes, dict):
        raise ConfigError(f"{manifest_path} lists no module shapes under 'model'; re-export the mask.")
    masks = {}
    try:
        with safe_open(str(mask_path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                if name not in shapes:
                    raise ConfigError(f"Module '{name}' in {mask_path} has no shape in the manifest; re-export the mask.")
                packed = handle.get_tensor(name)
                if packed.dtype != torch.uint8:
                    raise ConfigError(f"The mask of '{name}' in {mask_path} is {packed.dtype}, not the packed uint8 "
                                      "bits PruneScope writes; re-export the mask.")
                masks[name] = unpack_mask(packed, tuple(shapes[name]))
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors' own errors: a damaged header or body
        raise ConfigError(f"{mask_path} is not a readable safetensors file ({type(exc).__name__}); "
                          "re-export the mask.") from None
    return masks, manifest


def sparsity_warning(masks: Mapping[str, torch.Tensor], manifest: dict) -> str | None:
    """A sentence when the sparsity measured on the masks differs from the one the manifest states (by more than
    0.01 percentage points), else None: the manifest was edited, or written by other code."""
    recorded = manifest.get("measured_sparsity")
    stated = recorded.get("overall") if isinstance(recorded, dict) else None
    measured = sparsity_of(masks)
    if isinstance(stated, (int, float)) and abs(float(stated) - measured) <= 1e-4:
        return None
    said = format(float(stated), ".2%") if isinstance(stated, (int, float)) else stated
    return (f"The masks are {measured:.2%} sparse but the manifest states {said}; the manifest was edited or "
            "written elsewhere: trust the measured figure.")


def check_mask_fits(loaded: LoadedModel, masks: Mapping[str, torch.Tensor], manifest: dict,
                    check_fingerprint: bool = True) -> None:
    """Refuse a mask made for another model: fingerprint and every module's shape must match."""
    expected = manifest.get("model", {}).get("fingerprint")
    origin = manifest.get("model", {}).get("name", "?")
    if check_fingerprint and not (isinstance(expected, str) and expected):
        raise ConfigError("The mask's manifest.json names no model fingerprint, so it cannot be checked against "
                          f"'{loaded.name}'; re-export the mask from the model it was made for.")
    if check_fingerprint and expected != loaded.fingerprint:
        raise ConfigError(
            f"This mask was made for model '{origin}' with weight fingerprint {expected}, but '{loaded.name}' has "
            f"fingerprint {loaded.fingerprint}: the weights differ, so the mask would prune the wrong weights. "
            "Load the same model the mask was exported from (see manifest.json 'model'), or re-export the mask "
            "for this model.")
    modules = loaded.adapter.prunable_modules(loaded.model)
    for name, mask in masks.items():
        if name not in modules:
            raise ConfigError(f"The mask names module '{name}', which '{loaded.name}' does not have as a prunable "
                              "linear; the mask belongs to another architecture.")
        if tuple(mask.shape) != tuple(modules[name].weight.shape):
            raise ConfigError(f"The mask for '{name}' has shape {tuple(mask.shape)} but the model's weight has "
                              f"{tuple(modules[name].weight.shape)}; the mask belongs to another model.")


@contextlib.contextmanager
def applied_mask_dir(loaded: LoadedModel, mask_dir, check_fingerprint: bool = True) -> Iterator[dict]:
    """Context manager: the mask folder applied to `loaded` (verified first), weights restored on exit.

    Yields {"manifest", "masks", "sparsity": measured {"overall", "per_module"}, "warning": `sparsity_warning`}.
    """
    masks, manifest = load_masks(mask_dir)
    check_mask_fits(loaded, masks, manifest, check_fingerprint)
    modules = {name: loaded.model.get_submodule(name) for name in masks}
    with applied_masks(loaded.model, masks):
        yield {"manifest": manifest, "masks": masks, "sparsity": measured_sparsity(loaded.model, modules),
               "warning": sparsity_warning(masks, manifest)}


def apply_mask_dir(loaded: LoadedModel, mask_dir, permanent: bool = False, check_fingerprint: bool = True):
    """Apply a mask folder to a model after verifying fingerprint and shapes.

    permanent=False: returns the `applied_mask_dir` context manager (weights restored on exit).
    permanent=True: zeroes the weights in place (for a freshly loaded model, as in the CLI) and returns
    {"manifest", "masks", "sparsity", "warning"}. The model's cached fingerprint is kept as that of the dense weights.
    """
    if not permanent:
        return applied_mask_dir(loaded, mask_dir, check_fingerprint)
    masks, manifest = load_masks(mask_dir)
    check_mask_fits(loaded, masks, manifest, check_fingerprint)
    with torch.no_grad():
        for name, mask in masks.items():
            weight = loaded.model.get_submodule(name).weight.data
            weight.mul_(mask.to(weight.dtype))
    modules = {name: loaded.model.get_submodule(name) for name in masks}
    return {"manifest": manifest, "masks": masks, "sparsity": measured_sparsity(loaded.model, modules),
            "warning": sparsity_warning(masks, manifest)}


# ------------------------------------------------------------------------------------------ pruned model

def _drop_quantization_config(model) -> None:
    """A GGUF-loaded model keeps quantization_config = gguf, which save_pretrained refuses (weights are floats)."""
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def save_pruned_model(loaded: LoadedModel, prune_result, out_dir, metadata: dict | None = None) -> Path:
    """Write the pruned model (masks and, for SparseGPT, updated weights applied) with `save_pretrained`.

    Safetensors weights plus the tokenizer, loadable with ``AutoModelForCausalLM.from_pretrained(out_dir)``.
    The in-memory model is restored on return. `metadata` (optional) goes to ``prunescope.json`` beside it.
    Returns the folder.
    """
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"'{out_dir}' is an existing file; give a folder for the pruned model.")
    out.mkdir(parents=True, exist_ok=True)
    _drop_quantization_config(loaded.model)
    with applied_masks(loaded.model, prune_result.masks, prune_result.weights):
        # Tied embeddings are shared tensors; save_pretrained handles them, but the weights must be contiguous.
        loaded.model.save_pretrained(str(out), safe_serialization=True)
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(str(out))
    for path in out.glob("*.safetensors"):  # safetensors writes files private; a model folder is meant to be shared
        os.chmod(path, 0o644)
    if metadata is not None:
        (out / "prunescope.json").write_text(json.dumps(metadata, indent=2, default=str))
    return out


# ------------------------------------------------------------------------------------------ compressed-tensors

def compressed_tensors_available() -> bool:
    """True when the optional `compressed-tensors` library is importable (2:4 compressed export)."""
    import importlib.util

    return importlib.util.find_spec("compressed_tensors") is not None

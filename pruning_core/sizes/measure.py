"""Sizes measured by writing: save the model the way a runtime loads it, stat the files, remember the answer.

A size is never a formula here: `measure_by_writing` lets a writer save into a temporary folder, measures what it
wrote with `files.saved_size`, deletes the folder and keeps the measurement in the store (keyed by the model's
weight fingerprint and what was saved), so a page that asks again reads it instead of writing hundreds of MB on
every rerun. `sixteen_bit_size` is the writer every pruning result uses: the model, masks applied (the zeros are
stored) or structurally smaller, saved with transformers' `save_pretrained` as 16-bit safetensors, the format
transformers and vLLM load. A quantization export measures its own folder through the same function (or
`measure_written` for a folder it keeps) with its format id from `files.FORMATS`.

A measurement record: {"format" (a `FORMATS` id), "what" ("dense", "pruned", "structured", ...), "dtype" (of the
stored values), "weight_bytes" (files holding weights: what the model weighs), "total_bytes" (every file, config
included), "files" [{"name", "bytes"}], "writer" (the library that wrote it, with its version)}.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

import torch

from pruning_core.sizes.files import FORMATS, saved_size

SIXTEEN_BIT = "safetensors-16bit"
#: The 16-bit type the weights are written in (bf16: what current checkpoints ship and vLLM serves by default;
#: fp16 files have exactly the same size).
SIXTEEN_BIT_DTYPE = torch.bfloat16
#: The store's result kind of a cached measurement.
MEASUREMENT_KIND = "saved_size"


def _writer_versions() -> dict:
    """The libraries whose output is measured: a new version may write other bytes, so it keys a new measurement."""
    import safetensors
    import transformers

    return {"transformers": transformers.__version__, "safetensors": safetensors.__version__}


def measurement_key(fingerprint: str, fmt: str, what: str, content: Optional[str] = None,
                    dtype: Optional[str] = None) -> dict:
    """Everything that decides the bytes of a saved model (hash it with `store.content_hash`).

    fingerprint: the dense model's weight fingerprint; what: "dense", "pruned", "structured", ...; content: a
    digest of what was applied to it (the masks and updated weights, the structured copy's fingerprint, a
    quantization recipe), None for the dense model itself."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown size format '{fmt}'; use one of {sorted(FORMATS)}.")
    return {"kind": MEASUREMENT_KIND, "format": fmt, "model": fingerprint, "what": what, "content": content,
            "dtype": dtype, "writer": _writer_versions()}


def measure_written(path, fmt: str, what: str, **extra: Any) -> dict:
    """The measurement record of files already written at `path` (a folder or a file); `extra` is kept in it
    (e.g. dtype, or runtimes where they differ from the format's)."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown size format '{fmt}'; use one of {sorted(FORMATS)}.")
    return {"format": fmt, "what": what, **extra, **saved_size(path)}


def cached_measurement(store, key: Mapping) -> Optional[dict]:
    """The measurement stored under `key` (`measurement_key`), or None (also without a store)."""
    if store is None:
        return None
    from pruning_core.store import content_hash

    return store.get_result(content_hash(dict(key)))


def measure_by_writing(key: Mapping, write: Callable[[Path], None], store=None, **extra: Any) -> dict:
    """Call `write(folder)` on an empty temporary folder, measure what it wrote (`measure_written`) and delete it.

    key: `measurement_key(...)`, whose "format" and "what" the record takes; a measurement stored under it in
    `store` is returned without writing anything, and a new one is stored there. `extra` goes into the record.
    """
    found = cached_measurement(store, key)
    if found is not None:
        return found
    with tempfile.TemporaryDirectory(prefix="prunescope-size-") as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        write(folder)
        record = measure_written(folder, key["format"], key["what"], **extra)
    record["writer"] = dict(key.get("writer") or {})
    if store is not None:
        from pruning_core.store import content_hash

        store.put_result(content_hash(dict(key)), MEASUREMENT_KIND, record)
    return record


def _sixteen_bit_state(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The model's state dict in `dtype`, tied tensors kept shared (so `save_pretrained` stores them once)."""
    converted: dict[int, torch.Tensor] = {}
    state = {}
    for name, tensor in model.state_dict().items():
        ptr = tensor.data_ptr()
        if ptr not in converted:
            converted[ptr] = tensor.detach().to(dtype) if tensor.is_floating_point() else tensor.detach()
        state[name] = converted[ptr]
    return state


def save_sixteen_bit(model: torch.nn.Module, folder, dtype: torch.dtype = SIXTEEN_BIT_DTYPE) -> None:
    """Write `model` to `folder` with `save_pretrained` as 16-bit safetensors, leaving the model as it was (its
    tensors stay in their dtype; the config written says `dtype`)."""
    if getattr(model.config, "quantization_config", None) is not None:
        # A GGUF-loaded model keeps quantization_config = gguf, which save_pretrained refuses; its weights are
        # already plain floats (as `mask_files.save_pruned_model` does).
        del model.config.quantization_config
    model.save_pretrained(str(folder), state_dict=_sixteen_bit_state(model, dtype), safe_serialization=True)
    config = copy.deepcopy(model.config)
    config.dtype = dtype
    config.save_pretrained(str(folder))  # the folder says what it holds: 16-bit values


def masks_digest(masks: Optional[Mapping[str, torch.Tensor]],
                 weights: Optional[Mapping[str, torch.Tensor]] = None) -> Optional[str]:
    """A digest of the masks (and updated weights) applied before saving: what keys a pruned model's measurement."""
    if not masks:
        return None
    from pruning_core.packed_masks import PackedMasks
    from pruning_core.store import content_hash, tensors_hash

    # Held packed and hashed one unpacked mask at a time (the digest of the bool tensors, as before).
    bool_masks = PackedMasks((name, mask.to(torch.bool)) for name, mask in masks.items())
    return content_hash({"masks": tensors_hash(bool_masks), "weights": tensors_hash(weights) if weights else None})


def sixteen_bit_size(loaded, what: str = "dense", masks: Optional[Mapping[str, torch.Tensor]] = None,
                     weights: Optional[Mapping[str, torch.Tensor]] = None, store=None,
                     fingerprint: Optional[str] = None, content: Optional[str] = None, **extra: Any) -> dict:
    """The measured size of `loaded` saved as 16-bit safetensors (`save_sixteen_bit`), with `masks` (True = kept)
    and SparseGPT's `weights` applied while it is written (restored after: a cached model is never left pruned).

    what: the record's "what" ("dense", "pruned", "structured"); fingerprint: the dense model's weight fingerprint
    (default `loaded.fingerprint`; a structurally pruned copy passes its dense model's and its own as `content`);
    content: what keys the measurement besides the model (default: the masks' digest). Cached in `store`.
    """
    from pruning_core.masks import applied_masks

    dtype_name = str(SIXTEEN_BIT_DTYPE).replace("torch.", "")
    key = measurement_key(fingerprint or loaded.fingerprint, SIXTEEN_BIT, what,
                          content if content is not None else masks_digest(masks, weights), dtype_name)

    def write(folder: Path) -> None:
        if masks:
            with applied_masks(loaded.model, masks, weights):
                save_sixteen_bit(loaded.model, folder)
        else:
            save_sixteen_bit(loaded.model, folder)

    return measure_by_writing(key, write, store, dtype=dtype_name, **extra)


def dense_sixteen_bit_cached(store, fingerprint: Optional[str]) -> Optional[dict]:
    """The dense model's 16-bit safetensors measurement stored for `fingerprint`, or None: what a page without the
    model in hand (the Summary, an old stored result) shows."""
    if not fingerprint:
        return None
    dtype_name = str(SIXTEEN_BIT_DTYPE).replace("torch.", "")
    return cached_measurement(store, measurement_key(fingerprint, SIXTEEN_BIT, "dense", None, dtype_name))

"""The sizes a pruning result carries: its weight counts and the measured bytes of the files it is saved as.

A sizes record (version 2, what results, exports and reports store under "sizes"):
  {"sizes_version": 2, "structure" ("unstructured", "N:M" or "structured"), "parameters" (the dense model's, tied
   weights once), "prunable_weights", "kept_weights" (non-zero among them), "other_parameters" (embeddings, norms,
   LM head: never pruned), "structured_parameters" (a structurally pruned model's real count, else None),
   "measured": [measurement records (`measure.py`): the dense model and the result, each saved as a runtime loads
   it]}.
The counts explain the result; the bytes come only from the files written (`measure.sixteen_bit_size`). Records
stored before sizes were measured hold counts under older names and formula sizes (a sparse bitmap, an N:M
compressed form that no runtime loads): `sizes_from_record` reads them as version 2 with the counts and whatever
measurement the store holds for the model, never the old formula figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch

from pruning_core.errors import ConfigError
from pruning_core.sizes.measure import SIXTEEN_BIT, sixteen_bit_size

SIZES_VERSION = 2
STRUCTURED = "structured"  # the structure name of a structurally pruned (sliced) model


def weight_counts(parameters: int, prunable: int, kept: int, structure: str,
                  structured_parameters: Optional[int] = None) -> dict:
    """The counts part of a sizes record (see the module docstring); raises ConfigError when they cannot fit."""
    parameters, prunable, kept = int(parameters), int(prunable), int(kept)
    if not 0 <= kept <= prunable <= parameters:
        raise ConfigError(f"Size counts do not fit together (kept {kept}, prunable {prunable}, parameters "
                          f"{parameters}); they must satisfy 0 <= kept <= prunable <= parameters.")
    return {"sizes_version": SIZES_VERSION, "structure": str(structure), "parameters": parameters,
            "prunable_weights": prunable, "kept_weights": kept, "other_parameters": parameters - prunable,
            "structured_parameters": None if structured_parameters is None else int(structured_parameters),
            "measured": []}


def counts_from_masks(loaded, masks: Mapping[str, torch.Tensor], structure: str) -> dict:
    """`weight_counts` of a loaded model and its keep-masks (True = kept); unmasked prunable weights count as kept."""
    facts = loaded.describe()
    prunable = int(facts["prunable_parameters"])
    masked = sum(int(m.numel()) for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values()) + max(0, prunable - masked)
    return weight_counts(facts["parameters"], prunable, kept, structure)


def sizes_from_masks(loaded, masks: Mapping[str, torch.Tensor], structure: str,
                     weights: Optional[Mapping[str, torch.Tensor]] = None, store=None) -> dict:
    """THE sizes of a mask-pruned result: its counts, and the dense and the pruned model (masks and SparseGPT's
    `weights` applied: the zeros are stored) each saved as 16-bit safetensors and measured (cached in `store`)."""
    sizes = counts_from_masks(loaded, masks, structure)
    sizes["measured"] = [sixteen_bit_size(loaded, "dense", store=store),
                         sixteen_bit_size(loaded, "pruned", masks, weights, store=store)]
    return sizes


def structured_sizes(dense, pruned, store=None, loadable: bool = True, load_note: str = "") -> dict:
    """THE sizes of a structurally pruned copy `pruned` of `dense` (both `LoadedModel`s): the counts (the copy's
    prunable weights as kept, its real parameter count) and both models saved as 16-bit safetensors, measured.

    loadable/load_note: whether plain transformers can read the copy's folder (`slicing.loadable_with_transformers`);
    when not, the record names the loader that can, so no sentence promises a runtime that cannot load it."""
    facts = dense.describe()
    kept = sum(int(m.weight.numel()) for m in pruned.adapter.prunable_modules(pruned.model).values())
    after = sum(p.numel() for p in pruned.model.parameters())
    sizes = weight_counts(facts["parameters"], facts["prunable_parameters"], kept, STRUCTURED, after)
    extra: dict[str, Any] = {} if loadable else {
        "runtimes": ["PruneScope's load_structured"],
        "runtime_note": load_note or "its layers have different widths, which plain transformers cannot read"}
    sizes["measured"] = [sixteen_bit_size(dense, "dense", store=store),
                         sixteen_bit_size(pruned, STRUCTURED, store=store, fingerprint=dense.fingerprint,
                                          content=pruned.fingerprint, **extra)]
    return sizes


def measured(sizes: Optional[Mapping[str, Any]], what: str, fmt: str = SIXTEEN_BIT) -> Optional[dict]:
    """The measurement of `what` ("dense", "pruned", "structured", ...) in format `fmt` in a sizes record, or None."""
    for record in (sizes or {}).get("measured") or ():
        if record.get("what") == what and record.get("format") == fmt:
            return record
    return None


def _old_counts(record: Mapping[str, Any], structure: str) -> Optional[dict]:
    """`weight_counts` from a record stored before version 2 (the what-if's "size": prunable_weights/kept_weights/
    other_parameters; the report's "sizes": parameters/pruned_linear_weights/kept_weights), or None."""
    kept = record.get("kept_weights")
    if kept is None:
        return None
    if "prunable_weights" in record and "other_parameters" in record:
        prunable = int(record["prunable_weights"])
        parameters = prunable + int(record["other_parameters"])
    elif "parameters" in record and "pruned_linear_weights" in record:
        parameters, prunable = int(record["parameters"]), int(record["pruned_linear_weights"])
    else:
        return None
    try:
        return weight_counts(parameters, prunable, int(kept), str(record.get("structure") or structure),
                             record.get("structured_parameters"))
    except ConfigError:
        return None


def sizes_from_record(record: Optional[Mapping[str, Any]], structure: str,
                      dense_measured: Optional[Mapping[str, Any]] = None) -> Optional[dict]:
    """A stored sizes record read as version 2, or None when it holds no counts.

    A version-2 record comes back as stored. An older one (formula sizes) becomes its counts with `measured` =
    [`dense_measured`] (the dense model's measurement the store holds for its fingerprint, when given): the old
    formula figures are dropped, since they were sizes of formats no runtime loads."""
    if not record:
        return None
    if record.get("sizes_version") == SIZES_VERSION:
        return dict(record)
    sizes = _old_counts(record, structure)
    if sizes is not None and dense_measured:
        sizes["measured"] = [dict(dense_measured)]
    return sizes


def sizes_for_point(model_facts: Mapping[str, Any], point: Mapping[str, Any],
                    dense_measured: Optional[Mapping[str, Any]] = None) -> Optional[dict]:
    """The sizes of a stored sweep point (no masks kept, nothing saved): counts with kept = prunable x (1 - measured
    sparsity), and [`dense_measured`] as its measurements (a pruned model saved the ordinary way stores its zeros,
    so its file is the dense model's size). None when the facts lack the counts."""
    if not model_facts or "parameters" not in model_facts or "prunable_parameters" not in model_facts:
        return None
    prunable = int(model_facts["prunable_parameters"])
    kept = int(round(prunable * (1.0 - float(point["sparsity"]))))
    sizes = weight_counts(model_facts["parameters"], prunable, kept, str(point.get("structure", "unstructured")))
    if dense_measured:
        sizes["measured"] = [dict(dense_measured)]
    return sizes


def measured_rows(sizes: Optional[Mapping[str, Any]]) -> Sequence[dict]:
    """The measurement records of a sizes record, dense first (what a table of sizes lists)."""
    records = list((sizes or {}).get("measured") or ())
    return sorted(records, key=lambda r: r.get("what") != "dense")

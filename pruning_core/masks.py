"""Mask builders, the apply/restore context manager, and sparsity accounting.

Convention: a mask is a bool tensor in the module's *native* weight layout, True = weight kept.
Masks are keyed by qualified module name (``model.layers.0.self_attn.q_proj``).

The embedded model's weights are dequantised Q4_1 values, so many scores tie exactly: every builder picks
exactly k weights *by index* (top-k), never by ``score <= threshold``, or the sparsity would overshoot.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Optional

import torch
from torch import nn

from pruning_core.errors import ConfigError
from pruning_core.packed_masks import mask_shape


@dataclass(frozen=True)
class Structure:
    """Sparsity structure: unstructured, or N:M (at most n non-zeros in every m consecutive inputs)."""

    n: int = 0
    m: int = 0

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> Optional[float]:
        """The fixed sparsity an N:M structure implies (1 - n/m), None for unstructured."""
        return 1.0 - self.n / self.m if self.is_nm else None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else "unstructured"


UNSTRUCTURED = Structure()
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_structure(text: str) -> Structure:
    """Parse "unstructured", "2:4", "4:8"... A malformed N:M string gets a message with examples."""
    if text.strip().lower() == "unstructured":
        return UNSTRUCTURED
    match = _NM.match(text)
    if not match:
        raise ConfigError(f"Structure '{text}' is not understood; use 'unstructured' or N:M such as '2:4' or '4:8'.")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ConfigError(f"Structure '{text}' needs 0 < N < M (for example 2:4 or 4:8).")
    return Structure(n, m)


def check_sparsity(sparsity: float) -> float:
    """Validate a sparsity fraction in [0, 1)."""
    if not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise ConfigError(f"Sparsity {sparsity!r} is outside [0, 1); give a fraction such as 0.5 for 50 %.")
    return float(sparsity)


def prune_count(numel: int, sparsity: float) -> int:
    """Number of weights to remove from `numel` at `sparsity` (rounded to the nearest element)."""
    return int(round(numel * sparsity))


def lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of exactly `k` lowest entries along the last dim; ties at the cut go to the lowest index.

    Uses kthvalue (about 3x faster than topk for k ~ n/2) and then breaks ties by position, so the count is
    exact even when many scores are equal (dequantised weights).
    """
    n = scores.shape[-1]
    if k <= 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if k >= n:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    cut = torch.kthvalue(scores, k, dim=-1, keepdim=True).values
    below = scores < cut
    tie = scores == cut
    missing = k - below.sum(dim=-1, keepdim=True)          # how many tied entries to take per row
    return below | (tie & (tie.cumsum(dim=-1) <= missing))


def keep_mask_from_scores(scores: torch.Tensor, sparsity: float, structure: Structure = UNSTRUCTURED,
                          per_row: bool = False) -> torch.Tensor:
    """Keep-mask for an (out, in) score matrix: low scores are pruned.

    unstructured, per_row=False: exactly round(numel * sparsity) lowest scores of the matrix pruned
    (one threshold per matrix, as magnitude pruning does).
    unstructured, per_row=True: exactly round(in * sparsity) lowest scores of every output row (Wanda).
    N:M: in every group of m consecutive inputs of a row, the m - n lowest scores pruned (sparsity ignored).
    """
    rows, cols = scores.shape
    scores = scores.contiguous()  # Conv1D weights arrive as transposed views
    if structure.is_nm:
        if cols % structure.m:
            raise ConfigError(f"Input width {cols} is not a multiple of M={structure.m}; use another N:M.")
        groups = scores.reshape(rows, cols // structure.m, structure.m)
        return ~lowest_k(groups, structure.m - structure.n).reshape(rows, cols)
    if per_row:
        return ~lowest_k(scores, prune_count(cols, sparsity))
    return ~lowest_k(scores.reshape(-1), prune_count(scores.numel(), sparsity)).reshape(rows, cols)


def score_ranks(scores: torch.Tensor, per_row: bool) -> torch.Tensor:
    """Rank of every score from the lowest (0), ties by position, within each row or the whole matrix.

    The rank order is what `keep_mask_from_scores` cuts (`lowest_k` breaks ties at the cut by the lowest
    index, as a stable sort does), so `keep_mask_from_ranks(ranks, s)` gives the same mask at any sparsity s
    with one comparison: a sweep ranks once and re-thresholds per point. int16 when the ranked length fits
    (2 bytes per weight), else int32.
    """
    rows, cols = scores.shape
    flat = scores.contiguous() if per_row else scores.reshape(1, -1)
    n = flat.shape[1]
    order = flat.argsort(dim=-1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(n, device=scores.device).expand_as(order))
    return ranks.to(torch.int16 if n <= torch.iinfo(torch.int16).max else torch.int32).reshape(rows, cols)


def keep_mask_from_ranks(ranks: torch.Tensor, sparsity: float, per_row: bool) -> torch.Tensor:
    """Keep-mask (out, in) from `score_ranks`: the round(n * sparsity) lowest-ranked entries are pruned."""
    n = ranks.shape[1] if per_row else ranks.numel()
    return ranks >= prune_count(n, sparsity)


def sparsity_of(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of pruned weights (False entries) over all given masks."""
    total = sum(mask.numel() for mask in masks.values())
    kept = sum(int(mask.sum()) for mask in masks.values())
    return 1.0 - kept / total if total else 0.0


def measured_sparsity(model: nn.Module, modules: Mapping[str, nn.Module]) -> dict:
    """Measure zeros / elements of the given modules' weights as they are now.

    Returns {"overall": fraction, "per_module": {name: fraction}}.
    """
    per_module = {}
    zeros = total = 0
    for name, module in modules.items():
        weight = module.weight.detach()
        z = int((weight == 0).sum())
        per_module[name] = z / weight.numel()
        zeros += z
        total += weight.numel()
    return {"overall": zeros / total if total else 0.0, "per_module": per_module}


def sparsity_when_applied(model: nn.Module, masks: Mapping[str, torch.Tensor],
                          weights: Optional[Mapping[str, torch.Tensor]] = None) -> dict:
    """Zeros / elements the weights would have with `masks` (and `weights`) applied, without applying them.

    A weight is zero if its mask entry is False or its (replacement) value is exactly 0.
    Returns {"overall": fraction, "per_module": {name: fraction}}.
    """
    per_module = {}
    zeros = total = 0
    for name, mask in masks.items():
        value = weights[name] if weights is not None and name in weights else model.get_submodule(name).weight
        z = int(((~mask) | (value.detach() == 0)).sum())
        per_module[name] = z / mask.numel()
        zeros += z
        total += mask.numel()
    return {"overall": zeros / total if total else 0.0, "per_module": per_module}


@contextlib.contextmanager
def preserved_weights(model: nn.Module, names: Iterable[str]) -> Iterator[nn.Module]:
    """Copy the named modules' weights on entry and restore them bit-identically on exit (even on error).

    Costs a copy of every named weight for the whole block: around a layer walk, prefer `walk_layers(...,
    restore_each_layer=True)`, which keeps one layer's copy at a time."""
    with preserved_module_weights([model.get_submodule(name) for name in names]):
        yield model


@contextlib.contextmanager
def preserved_module_weights(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Copy these modules' weights on entry and restore them bit-identically on exit (even on error)."""
    saved = [(module, module.weight.data.clone()) for module in modules]
    try:
        yield
    finally:
        with torch.no_grad():
            for module, original in saved:
                module.weight.data.copy_(original)


def _check_mask_shapes(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    for name in masks:  # shapes only: a `PackedMasks` is not unpacked for this
        module = model.get_submodule(name)
        shape = tuple(mask_shape(masks, name))
        if shape != tuple(module.weight.shape):
            raise ConfigError(f"Mask for '{name}' has shape {shape} but the weight has "
                              f"{tuple(module.weight.shape)}; the mask belongs to another model.")


def _apply_one(weight: torch.Tensor, mask: torch.Tensor, replacement: Optional[torch.Tensor]) -> None:
    """Write `replacement` (if any) into `weight`, then zero its entries whose keep-mask is False."""
    if replacement is not None:
        weight.copy_(replacement.to(device=weight.device, dtype=weight.dtype))
    weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))


@contextlib.contextmanager
def applied_masks(model: nn.Module, masks: Mapping[str, torch.Tensor],
                  weights: Optional[Mapping[str, torch.Tensor]] = None) -> Iterator[nn.Module]:
    """Apply keep-masks (and optionally replacement weights, e.g. SparseGPT's) inside a `with` block.

    The original weights are restored bit-identically on exit, even on error, so a model held in a cache
    is never left mutated. Yields the model. What is kept for the restore: for a mask alone, only the values it
    zeroes (a 1-D copy, `sparsity` x the weight's bytes; the mask is read again to put them back, so no
    unpacked mask of a `PackedMasks` outlives its module); with a replacement weight, the whole original.
    For a forward-only use (perplexity), `masks_applied_per_forward` keeps one matrix's copy at a time.
    """
    _check_mask_shapes(model, masks)
    saved: list[tuple[str, torch.Tensor, torch.Tensor, bool]] = []  # (name, weight, backup, backup is whole)
    try:
        with torch.no_grad():
            for name, mask in masks.items():
                weight = model.get_submodule(name).weight.data
                replacement = weights.get(name) if weights is not None else None
                if replacement is not None:
                    saved.append((name, weight, weight.clone(), True))
                else:
                    saved.append((name, weight, weight[~mask.to(device=weight.device, dtype=torch.bool)], False))
                _apply_one(weight, mask, replacement)
                del mask
        yield model
    finally:
        with torch.no_grad():
            for name, weight, backup, whole in saved:
                if whole:
                    weight.copy_(backup)
                else:
                    weight.masked_scatter_(~masks[name].to(device=weight.device, dtype=torch.bool), backup)


@contextlib.contextmanager
def masks_applied_per_forward(model: nn.Module, masks: Mapping[str, torch.Tensor],
                              weights: Optional[Mapping[str, torch.Tensor]] = None) -> Iterator[nn.Module]:
    """Like `applied_masks`, for forward passes without gradients (perplexity): each masked module gets its
    pruned weight just before its forward and its original right after, so one matrix's copy is alive at a time
    instead of the masked model's (2x less memory than the whole-model copy for a 1B model in fp32: 4 GB).

    The forward computes with exactly the weights `applied_masks` would give (same numbers); costs two copies
    of each matrix per forward call, small beside the matmul of a batch of hundreds of tokens. Not for training:
    autograd would see the restored weights in the backward pass.
    """
    _check_mask_shapes(model, masks)
    pending: dict[int, torch.Tensor] = {}
    handles = []

    def make_hooks(name: str):
        replacement = weights.get(name) if weights is not None else None

        def before(module, args):  # noqa: ARG001 - torch hook signature
            with torch.no_grad():
                weight = module.weight.data
                pending[id(module)] = weight.clone()
                # Read per forward: a `PackedMasks` then unpacks one module's mask at a time, never all.
                _apply_one(weight, masks[name], replacement)

        def after(module, args, output):  # noqa: ARG001 - torch hook signature
            with torch.no_grad():
                module.weight.data.copy_(pending.pop(id(module)))

        return before, after

    try:
        for name in masks:
            module = model.get_submodule(name)
            before, after = make_hooks(name)
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after, always_call=True))
        yield model
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():  # a forward stopped between the hooks leaves its module's original here
            for name in masks:
                module = model.get_submodule(name)
                if id(module) in pending:
                    module.weight.data.copy_(pending.pop(id(module)))

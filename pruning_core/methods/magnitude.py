"""Magnitude pruning: score |W|, one threshold per matrix (exactly k weights removed, chosen by index)."""

from __future__ import annotations

import torch

from pruning_core.masks import Structure, keep_mask_from_scores
from pruning_core.methods.base import Method, MethodOptions


def prune_magnitude(weight: torch.Tensor, stats, sparsity: float, structure: Structure,
                    options: MethodOptions) -> tuple[torch.Tensor, None]:  # noqa: ARG001 - PruneFn signature
    """Keep-mask of the largest |W| (N:M: within each group of M inputs of a row)."""
    return keep_mask_from_scores(magnitude_scores(weight, stats), sparsity, structure, per_row=False), None


def magnitude_scores(weight: torch.Tensor, stats=None) -> torch.Tensor:  # noqa: ARG001 - scores signature
    """|W|, shape (out, in)."""
    return weight.abs()


MAGNITUDE = Method("magnitude", needs="none", updates_weights=False, prune=prune_magnitude,
                   description="|W|, one threshold per matrix; needs no data", scores=magnitude_scores,
                   per_row=False)

"""Wanda (Sun et al., 2023): score |W_ij| * ||X_j||_2, ranked within each output row; no weight update."""

from __future__ import annotations

import torch

from pruning_core.masks import Structure, keep_mask_from_scores
from pruning_core.stats import InputStatistics
from pruning_core.methods.base import Method, MethodOptions


def wanda_scores(weight: torch.Tensor, act_sq: torch.Tensor) -> torch.Tensor:
    """|W| * sqrt(mean x_j^2): proportional to |W_ij| * ||X_j||_2, shape (out, in)."""
    return weight.abs() * act_sq.sqrt().reshape(1, -1)


def _scores(weight: torch.Tensor, stats: InputStatistics) -> torch.Tensor:
    return wanda_scores(weight, stats.act_sq)


def prune_wanda(weight: torch.Tensor, stats: InputStatistics, sparsity: float, structure: Structure,
                options: MethodOptions) -> tuple[torch.Tensor, None]:  # noqa: ARG001 - PruneFn signature
    """Keep-mask: per output row the highest Wanda scores (N:M: per group of M inputs)."""
    return keep_mask_from_scores(_scores(weight, stats), sparsity, structure, per_row=True), None


WANDA = Method("wanda", needs="act_sq", updates_weights=False, prune=prune_wanda,
               description="|W| x input-activation norm, per output row; one forward pass, no update",
               scores=_scores, per_row=True)

"""Figures of a continual run: the R matrix, average perplexity, backward and forward transfer, mask overlap.

R[t][i] = perplexity on domain i's evaluation split after step t (0-based rows and columns, T x T), measured for
every i, including domains that have not arrived yet, so forward transfer is visible too. Perplexity has no
unit; differences below are in perplexity points.

- average: mean of the last row, the quality the final model offers over all domains.
- BWT (`pruning_core.metrics.backward_transfer`) = mean over i < T of (R[T][i] - R[i][i]); positive = the
  earlier domains got worse after the later steps (forgetting), negative = they got better.
- FWT = mean over i >= 1 of (R[i-1][i] - R[i][i]): how much higher a domain's perplexity is just before its own
  step than right after it; 0 = the earlier domains had already prepared the mask for it, positive = its own
  step was needed.
- mask overlap between consecutive steps: Jaccard index |P_{t-1} & P_t| / |P_{t-1} | P_t| of the sets of
  pruned weights over every pruned linear (1 = the same mask).

Every perplexity comes from `evaluate.evaluate_setting` (see `run.py`); this module only does arithmetic.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch

from pruning_core.errors import ConfigError
from pruning_core.metrics import backward_transfer

__all__ = ["average_perplexity", "backward_transfer", "forward_transfer", "mask_overlap", "r_matrix"]


def r_matrix(rows: Sequence[Mapping[str, float]], domains: Sequence[str]) -> list[list[float]]:
    """R as a list of rows: rows[t] = {domain: perplexity after step t}; columns in `domains` order."""
    if len(rows) != len(domains):
        raise ConfigError(f"An R matrix needs one row per step ({len(domains)} domains), got {len(rows)} rows.")
    missing = [(t, d) for t, row in enumerate(rows) for d in domains if d not in row]
    if missing:
        raise ConfigError(f"Perplexity missing for step/domain {missing[:3]}; evaluate every domain at every step.")
    return [[float(row[d]) for d in domains] for row in rows]


def _check_square(R: Sequence[Sequence[float]]) -> int:
    T = len(R)
    if T == 0 or any(len(row) != T for row in R):
        raise ConfigError("The R matrix must be square (steps x domains) and not empty.")
    return T


def average_perplexity(R: Sequence[Sequence[float]]) -> float:
    """Mean perplexity over every domain after the last step (mean of R's last row)."""
    T = _check_square(R)
    return sum(R[T - 1]) / T


def forward_transfer(R: Sequence[Sequence[float]]) -> Optional[float]:
    """FWT = mean over i >= 1 of (R[i-1][i] - R[i][i]), in perplexity (see the module docstring); None for T = 1."""
    T = _check_square(R)
    if T < 2:
        return None
    return sum(R[i - 1][i] - R[i][i] for i in range(1, T)) / (T - 1)


def mask_overlap(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]) -> float:
    """Jaccard index of the pruned sets of two keep-masks (True = kept) over every module they share.

    1.0 when both prune exactly the same weights (or none at all); 0.0 when they share no pruned weight.
    """
    if set(before) != set(after):
        raise ConfigError("The two masks cover different modules; compare masks of the same model and targets.")
    both = either = 0
    for name, keep in before.items():
        pruned_a, pruned_b = ~keep.to(torch.bool), ~after[name].to(torch.bool)
        both += int((pruned_a & pruned_b).sum())
        either += int((pruned_a | pruned_b).sum())
    return 1.0 if either == 0 else both / either

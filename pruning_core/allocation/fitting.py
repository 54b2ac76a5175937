"""Fitting a plan to its target: per-module preferences -> the plan whose global sparsity by parameters is the target.

Every allocator ends here, so that "owl at 70 %" prunes 70 % of the weights (not 70 % of the cells' mean) and no
cell leaves its bounds. Two pieces:

- `bounds_table`: the per-module bounds [lo, hi] an allocator's options ask for (a number for every module or a
  layers x kinds table), checked against the plan's own limits;
- `fit_offset`: given preferences p (layers x kinds, sparsity fractions) and bounds, the values
  clip(p + c, lo, hi) with the one additive offset c for which the global sparsity by parameters equals the
  target. The global sparsity is a continuous non-decreasing function of c, so bisection finds c to 1e-12.

An allocator that solves its own constrained problem (the sensitivity allocator's greedy fill) still checks its
result with `check_on_target`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pruning_core.plan import MAX_SPARSITY
from pruning_core.errors import ConfigError

#: Largest difference (fraction) between a fitted plan's global sparsity and its target; far below the 0.1
#: percentage point that tests and pages rely on.
TOLERANCE = 1e-9


def size_table(sizes: Sequence[Mapping[str, int]], kinds: Sequence[str]) -> np.ndarray:
    """(layers, kinds) float64 weight counts from `module_sizes`' list of {kind: count}."""
    return np.array([[float(layer[k]) for k in kinds] for layer in sizes], dtype=np.float64)


def global_of(values: np.ndarray, weights: np.ndarray) -> float:
    """Zeros / elements of a (layers, kinds) sparsity table with weight counts `weights` (same shape)."""
    return float((values * weights).sum() / max(weights.sum(), 1.0))


def bounds_table(low: Any, high: Any, shape: tuple[int, int], kinds: Sequence[str] = ()) -> tuple[np.ndarray,
                                                                                                   np.ndarray]:
    """Per-module bounds as two (layers, kinds) arrays from a number or a layers x kinds table for each.

    Raises ConfigError when a bound is not a fraction in [0, MAX_SPARSITY] or a lower bound exceeds its upper one.
    """
    def table(value: Any, name: str) -> np.ndarray:
        try:
            array = np.broadcast_to(np.asarray(value, dtype=np.float64), shape).copy()
        except (ValueError, TypeError):
            raise ConfigError(f"The {name} sparsity bound must be a number or a table of {shape[0]} layers x "
                              f"{shape[1]} module kinds ({', '.join(kinds)}); got {value!r}.") from None
        if not np.all(np.isfinite(array)) or array.min() < 0.0 or array.max() > MAX_SPARSITY:
            raise ConfigError(f"The {name} sparsity bound must lie in [0, {MAX_SPARSITY:g}] (a fraction such as "
                              f"0.95 for 95 %); got {value!r}.")
        return array

    lo, hi = table(low, "lower"), table(high, "upper")
    if np.any(lo > hi):
        layer, column = (int(i) for i in np.argwhere(lo > hi)[0])
        kind = kinds[column] if column < len(kinds) else column
        raise ConfigError(f"The lower sparsity bound {lo[layer, column]:g} of layer {layer} {kind} is above its "
                          f"upper bound {hi[layer, column]:g}; make the lower bound smaller.")
    return lo, hi


def check_feasible(target: float, weights: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    """Raise ConfigError unless some plan inside [lo, hi] has global sparsity `target` (by parameters)."""
    low, high = global_of(lo, weights), global_of(hi, weights)
    if not low - TOLERANCE <= target <= high + TOLERANCE:
        raise ConfigError(f"A global sparsity of {100 * target:.1f} % cannot be reached with these per-module "
                          f"bounds: they allow {100 * low:.1f} % to {100 * high:.1f} %. Change the target or "
                          "the bounds.")


def fit_offset(preferences: np.ndarray, weights: np.ndarray, target: float, lo: np.ndarray,
               hi: np.ndarray) -> np.ndarray:
    """clip(preferences + c, lo, hi) with the offset c that makes the global sparsity by parameters `target`.

    preferences, weights, lo, hi: (layers, kinds) arrays (sparsity fractions; weight counts). Returns a new
    float64 array whose global sparsity is within TOLERANCE of target. Where no cell is clipped the shape of
    the preferences is kept exactly (every cell moves by the same c).
    """
    preferences = np.asarray(preferences, dtype=np.float64)
    check_feasible(target, weights, lo, hi)
    target = min(max(target, global_of(lo, weights)), global_of(hi, weights))  # within TOLERANCE of a bound

    def achieved(offset: float) -> float:
        return global_of(np.clip(preferences + offset, lo, hi), weights)

    # Below `left` every cell sits at lo, above `right` every cell sits at hi: the root is between them.
    left, right = float((lo - preferences).min()), float((hi - preferences).max())
    for _ in range(200):
        middle = 0.5 * (left + right)
        if achieved(middle) < target:
            left = middle
        else:
            right = middle
        if right - left < 1e-15:
            break
    values = np.clip(preferences + 0.5 * (left + right), lo, hi)
    check_on_target(values, weights, target)
    return values


def check_on_target(values: np.ndarray, weights: np.ndarray, target: float) -> None:
    """Raise (a bug, not a user error) if a fitted plan misses its target by more than TOLERANCE."""
    achieved = global_of(values, weights)
    if abs(achieved - target) > TOLERANCE:
        raise RuntimeError(f"allocation missed its target: {achieved!r} for {target!r}")

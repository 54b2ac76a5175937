"""The sensitivity allocator: per-module sparsities that minimise the predicted loss increase under the global target.

Input: a sensitivity result of `analysis.sensitivity.compute_sensitivity` (``{"maps": [...], ...}``, or just the
list of maps) holding, for one method and one metric, maps at two or more sparsities. A map is
``{"layers": [layer indices], "modules": [kinds], "values": layers x kinds, "metric", "method", "sparsity"}``;
``values[i][j]`` is the cost of pruning module ``modules[j]`` of decoder layer ``layers[i]`` alone to ``sparsity``
(for "exact": the increase of mean token NLL in nats/token). Every layer of the model must be covered.

Cost model, per module m (cost c_m(s), s = sparsity):

1. measured points (0, 0), (s_1, v_1), ..., (s_P, v_P); noise is clamped away: v_k <- max(0, v_1, ..., v_k), a
   monotone non-decreasing curve (pruning more never helps, and a negative exact cell is probe noise);
2. between measured points a power law through both ends (log-log interpolation), below s_1 the power law
   through (s_1, v_1) with the first pair's exponent and beyond s_P the one with the last pair's exponent
   (both at least 1, so the curve is never less convex than a line through the origin). Pruning cost grows
   much faster than linearly near high sparsity; a power law follows that from two points where straight
   chords would make the sparsity between two measurements look as costly as the higher one. Where a value
   is 0 the piece is linear;
3. the curve is sampled on a GRID-spaced grid inside the module's bounds and replaced by its lower convex
   envelope (a no-op where step 2 already is convex).

Optimisation: greedy on marginal cost per parameter. Every module starts at its lower bound; the envelope's
segments of all modules are taken in order of cost increase per pruned weight, dc / (ds * n_m), until the
global target's number of zeros (by parameters) is reached; the last segment is taken in part, so the target is
met exactly. For separable convex piecewise-linear costs under one linear constraint this greedy fill is the
exact optimum (it is the fractional knapsack, i.e. the LP over the segments), and it needs no tuning, whereas
Lagrangian bisection on a price finds the same price but needs the same tie-break to land on the target, and a
general LP solver would add a dependency for nothing. The sum of single-module costs ignores interactions
between modules; it is the map's own assumption, and the benchmark measures how far it holds.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from pruning_core.allocation.fitting import bounds_table, check_feasible, check_on_target, size_table
from pruning_core.plan import SparsityPlan, module_sizes
from pruning_core.errors import ConfigError

#: Metrics in the order the allocator prefers them when none is named: the measured loss increase first, then
#: its second-order estimate (same units), then the proxies.
PREFERRED_METRICS = ("exact", "fisher", "taylor", "reconstruction")
#: Spacing (sparsity fraction) of the grid each module's cost curve is sampled on.
GRID = 0.01
#: Default per-module bounds.
DEFAULT_MIN = 0.0
DEFAULT_MAX = 0.95


# ---------------------------------------------------------------------------------------------- reading maps

def _maps_of(sensitivity: Any) -> list[Mapping]:
    maps = sensitivity.get("maps") if isinstance(sensitivity, Mapping) else sensitivity
    if not isinstance(maps, Sequence) or not all(isinstance(m, Mapping) for m in maps):
        raise ConfigError("The sensitivity input must be a sensitivity result {'maps': [...]} or a list of maps "
                          "(each with 'layers', 'modules', 'values', 'metric', 'method', 'sparsity').")
    return list(maps)


def select_maps(sensitivity: Any, metric: Optional[str] = None,
                method: Optional[str] = None) -> tuple[str, str, list[Mapping]]:
    """(metric, method, maps) the allocator reads: one method, one metric, two or more positive sparsities.

    metric/method: which to use; None picks the only method and the first of PREFERRED_METRICS measured at two
    or more sparsities. Raises ConfigError saying what to compute when nothing fits.
    """
    maps = [m for m in _maps_of(sensitivity) if float(m.get("sparsity", 0.0)) > 0.0]
    methods = sorted({str(m.get("method")) for m in maps})
    if method is None:
        if len(methods) > 1:
            raise ConfigError(f"The sensitivity maps are for several methods ({', '.join(methods)}); choose one "
                              "with the option 'method'.")
        method = methods[0] if methods else None
    maps = [m for m in maps if str(m.get("method")) == str(method)]

    def sparsities(name: str) -> set[float]:
        return {float(m["sparsity"]) for m in maps if m.get("metric") == name}

    if metric is None:
        candidates = [name for name in PREFERRED_METRICS if len(sparsities(name)) >= 2]
        candidates += sorted(n for n in {str(m.get("metric")) for m in maps} - set(PREFERRED_METRICS)
                             if len(sparsities(n)) >= 2)
        if not candidates:
            have = ", ".join(f"{name} at {sorted(sparsities(name))}" for name in
                             sorted({str(m.get('metric')) for m in maps})) or "none"
            raise ConfigError("The sensitivity allocator needs maps of one metric at two or more sparsities "
                              f"(e.g. 0.5 and 0.7) to know each module's marginal cost; these maps have {have}. "
                              "Compute the map at a second sparsity.")
        metric = candidates[0]
    if len(sparsities(metric)) < 2:
        raise ConfigError(f"The sensitivity allocator needs '{metric}' maps at two or more sparsities; there are "
                          f"{len(sparsities(metric))}. Compute the map at another sparsity (e.g. 0.5 and 0.7).")
    return metric, str(method), [m for m in maps if m.get("metric") == metric]


def measured_costs(maps: Sequence[Mapping], layers: int, kinds: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(sparsities (P,), costs (layers, kinds, P)) from maps of one metric; the first map of a sparsity wins.

    Raises ConfigError when a map misses a layer or module kind of the model, or holds a non-number.
    """
    by_sparsity: dict[float, Mapping] = {}
    for m in maps:
        by_sparsity.setdefault(float(m["sparsity"]), m)
    points = np.array(sorted(by_sparsity), dtype=np.float64)
    costs = np.empty((layers, len(kinds), len(points)), dtype=np.float64)
    for p, s in enumerate(points):
        m = by_sparsity[float(s)]
        rows = {int(layer): row for layer, row in zip(m["layers"], m["values"])}
        columns = {str(kind): j for j, kind in enumerate(m["modules"])}
        missing_layers = [i for i in range(layers) if i not in rows]
        missing_kinds = [k for k in kinds if k not in columns]
        if missing_layers or missing_kinds:
            what = (f"layers {missing_layers[:5]}{'...' if len(missing_layers) > 5 else ''}" if missing_layers
                    else f"module kinds {', '.join(missing_kinds)}")
            raise ConfigError(f"The {m.get('metric')} map at {100 * s:g} % has no values for {what}; the "
                              "sensitivity allocator needs every module of the model. Compute the map for all "
                              "layers.")
        for i in range(layers):
            for k, kind in enumerate(kinds):
                value = rows[i][columns[kind]]
                if value is None or not math.isfinite(float(value)):
                    raise ConfigError(f"The {m.get('metric')} map at {100 * s:g} % has no number for layer {i} "
                                      f"{kind} ({value!r}); compute that map again.")
                costs[i, k, p] = float(value)
    return points, costs


# ---------------------------------------------------------------------------------------------- cost curves

def _exponent(s0: float, v0: float, s1: float, v1: float) -> Optional[float]:
    """Exponent b of the power law v0 * (s / s0)^b through both points; None where a value is 0."""
    if v0 <= 0.0 or v1 <= 0.0:
        return None
    return math.log(v1 / v0) / math.log(s1 / s0)


def cost_curve(points: np.ndarray, values: np.ndarray, s: np.ndarray) -> np.ndarray:
    """One module's predicted cost at sparsities `s` (steps 1-2 of the module docstring).

    points: measured sparsities (increasing, > 0, at least two); values: the costs measured there.
    """
    v = np.maximum.accumulate(np.maximum(np.asarray(values, dtype=np.float64), 0.0))  # monotone, >= 0
    knots = np.concatenate(([0.0], points))
    levels = np.concatenate(([0.0], v))
    exponents = [_exponent(points[k], v[k], points[k + 1], v[k + 1]) for k in range(len(points) - 1)]
    first = max(1.0, exponents[0] if exponents[0] is not None else 1.0)
    last = max(1.0, exponents[-1] if exponents[-1] is not None else 1.0)
    out = np.empty_like(s, dtype=np.float64)
    for index, x in enumerate(np.asarray(s, dtype=np.float64)):
        if x <= 0.0:
            out[index] = 0.0
        elif x <= points[0]:
            out[index] = v[0] * (x / points[0]) ** first
        elif x >= points[-1]:
            out[index] = v[-1] * (x / points[-1]) ** last
        else:
            k = int(np.searchsorted(knots, x, side="right")) - 1  # knots[k] <= x < knots[k + 1], k >= 1
            b = exponents[k - 1]
            if b is not None:
                out[index] = levels[k] * (x / knots[k]) ** b
            else:
                t = (x - knots[k]) / (knots[k + 1] - knots[k])
                out[index] = levels[k] + t * (levels[k + 1] - levels[k])
    return out


def convex_envelope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The lower convex envelope of the points (x, y) (x increasing), evaluated at x."""
    hull: list[int] = []
    for i in range(len(x)):
        # drop the last vertex while it lies on or above the chord from the one before it to point i
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (y[b] - y[a]) * (x[i] - x[a]) >= (y[i] - y[a]) * (x[b] - x[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    return np.interp(x, x[hull], y[hull])


def module_grid(lo: float, hi: float) -> np.ndarray:
    """lo, the multiples of GRID strictly between, and hi."""
    inner = np.arange(math.floor(lo / GRID) + 1, math.ceil(hi / GRID)) * GRID
    inner = inner[(inner > lo + 1e-12) & (inner < hi - 1e-12)]
    return np.unique(np.concatenate(([lo], inner, [hi])))


# ---------------------------------------------------------------------------------------------- the fill

def greedy_fill(points: np.ndarray, costs: np.ndarray, weights: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                target: float) -> np.ndarray:
    """(layers, kinds) sparsities minimising the summed predicted cost with global sparsity `target` by parameters.

    points, costs: from `measured_costs`; weights: (layers, kinds) weight counts; lo, hi: per-module bounds.
    """
    check_feasible(target, weights, lo, hi)
    layers, kinds = weights.shape
    module, start, width, rise = [], [], [], []
    for i in range(layers):
        for k in range(kinds):
            x = module_grid(float(lo[i, k]), float(hi[i, k]))
            if len(x) < 2:
                continue  # lo == hi: nothing to choose
            y = convex_envelope(x, cost_curve(points, costs[i, k], x))
            dy = np.diff(y)
            dx = np.diff(x)
            # the envelope's slopes rise; make rounding unable to reorder a module's own segments
            slopes = np.maximum.accumulate(dy / dx)
            module += [i * kinds + k] * len(dx)
            start += list(x[:-1])
            width += list(dx)
            rise += list(slopes * dx)
    flat_weights = weights.reshape(-1)
    module_a, start_a, width_a = np.array(module, dtype=np.int64), np.array(start), np.array(width)
    per_weight = np.array(rise) / (width_a * flat_weights[module_a])  # cost increase per pruned weight
    order = np.lexsort((module_a, start_a, per_weight))  # cheapest first; ties: lower sparsity, then module
    zeros = width_a[order] * flat_weights[module_a[order]]
    budget = target * weights.sum() - (lo * weights).sum()
    values = lo.reshape(-1).copy()
    taken = np.cumsum(zeros)
    full = int(np.searchsorted(taken, budget, side="right"))  # segments taken whole
    np.add.at(values, module_a[order[:full]], width_a[order[:full]])
    if full < len(order):
        left = budget - (taken[full - 1] if full > 0 else 0.0)
        if left > 0:
            segment = order[full]
            values[module_a[segment]] += left / flat_weights[module_a[segment]]
    values = np.clip(values.reshape(layers, kinds), lo, hi)
    check_on_target(values, weights, target)
    return values


def allocate_by_sensitivity(inputs: Any, target: float) -> SparsityPlan:
    """The sensitivity-guided plan for global target sparsity `target` (by parameters).

    inputs: `AllocationInputs` with `sensitivity` (see the module docstring) and options {"metric", "method":
    which maps to read (default: the only method, the preferred metric with two or more sparsities),
    "min_sparsity", "max_sparsity": per-module bounds, a number or a layers x kinds table (defaults 0, 0.95)}.
    """
    options = inputs.options or {}
    loaded = inputs.loaded
    kinds = tuple(loaded.adapter.module_kinds)
    weights = size_table(module_sizes(loaded), kinds)
    low, high = options.get("min_sparsity", DEFAULT_MIN), options.get("max_sparsity", DEFAULT_MAX)
    lo, hi = bounds_table(low, high, weights.shape, kinds)
    metric, method, maps = select_maps(inputs.sensitivity, options.get("metric"), options.get("method"))
    points, costs = measured_costs(maps, weights.shape[0], kinds)
    values = greedy_fill(points, costs, weights, lo, hi, float(target))
    settings = [("metric", metric), ("method", method),
                ("measured", ", ".join(f"{s:g}" for s in points))]
    settings += [(name, float(b)) if np.ndim(b) == 0 else (name, "per module")
                 for name, b in (("min_sparsity", low), ("max_sparsity", high))]
    return SparsityPlan(kinds, values.tolist(), "sensitivity", float(target), tuple(settings))


def predicted_cost(plan: SparsityPlan, sensitivity: Any, metric: Optional[str] = None,
                   method: Optional[str] = None) -> float:
    """The summed predicted cost (the metric's units) of `plan` under the cost model, for comparing plans."""
    metric, method, maps = select_maps(sensitivity, metric, method)
    points, costs = measured_costs(maps, plan.layers, plan.kinds)
    return float(sum(cost_curve(points, costs[i, k], np.array([plan.values[i][k]]))[0]
                     for i in range(plan.layers) for k in range(len(plan.kinds))))

"""OWL (outlier-weighted layerwise sparsity, Yin et al. 2024): layers with more activation outliers keep more weights.

The recipe, as the authors' reference code (github.com/luuyin/OWL, `lib/prune_all.py`) computes it:

1. For each decoder layer, score every weight of every prunable linear of the layer with Wanda's metric
   |W_ij| * ||X_j||_2 (X_j: the j-th input feature over all calibration tokens of the dense model), all linears
   of the layer together.
2. The layer's outlier ratio D_l (in %) = 100 x the fraction of those scores above M x their mean (M = 5).
3. The ratios are min-max normalised to [0, 2 lambda] (lambda = 0.08), centred on their mean, and the layer's
   density is (1 - target) + that centred value, so sparsity_l = target - (n_l - mean(n)): the layer with the
   most outliers is pruned up to lambda less than the target, the one with fewest up to lambda more.

The reference's layers all have equal size, so its unweighted mean of per-layer sparsities is the global
sparsity. Here the per-layer values are handed to `fitting.fit_offset` as preferences, which finds the same
table whenever layers are equally sized and no bound clips (the offset is then exactly the target), and keeps
the global sparsity by parameters exact when they are not. Every module of a layer gets the layer's value.

Statistics: the dense input statistics of the calibration set (`prune.Statistics` with "act_sq" or
"hessian"); ||X_j||_2 = sqrt(sum over tokens of x_j^2) is read from them, no forward pass is run here.
"""

from __future__ import annotations

import weakref
from typing import Any, Sequence

import numpy as np
import torch

from pruning_core.allocation.fitting import bounds_table, fit_offset, size_table
from pruning_core.plan import MAX_SPARSITY, SparsityPlan, module_sizes
from pruning_core.errors import ConfigError
from pruning_core.models import weight_matrix

#: OWL's defaults (the paper's LLaMA settings): outlier threshold M x mean score, sparsity spread lambda.
DEFAULT_M = 5.0
DEFAULT_LAMBDA = 0.08


def layer_scores(loaded, statistics, layer: int) -> list[torch.Tensor]:
    """Wanda scores |W_ij| * ||X_j||_2 (float32, (out, in)) of every prunable linear of decoder layer `layer`."""
    adapter = loaded.adapter
    module_of = adapter.layer_linears(adapter.decoder_layers(loaded.model)[layer])
    scores = []
    for kind, module in module_of.items():
        name = adapter.qualified_name(layer, kind)
        stats = statistics.by_module.get(name)
        if stats is None:
            raise ConfigError(f"The calibration statistics have no entry for {name}; they were collected for "
                              "another model. Collect them again for this one.")
        norm = stats.sum_sq.to(torch.float64).sqrt().to(torch.float32)  # ||X_j||_2 over all calibration tokens
        weight = weight_matrix(module).detach().to(torch.float32)
        if norm.numel() != weight.shape[1]:
            raise ConfigError(f"The calibration statistics of {name} have {norm.numel()} input features but "
                              f"the module has {weight.shape[1]}; they were collected for another model.")
        scores.append(weight.abs() * norm.unsqueeze(0))
    return scores


def outlier_ratio(scores: Sequence[torch.Tensor], m: float) -> float:
    """100 x the fraction of all `scores` (every linear of one layer together) above m x their mean."""
    total = sum(s.numel() for s in scores)
    mean = sum(float(s.sum(dtype=torch.float64)) for s in scores) / max(total, 1)
    count = sum(int((s > m * mean).sum()) for s in scores)
    return 100.0 * count / max(total, 1)


#: Outlier ratios already computed, per statistics object (weakly held) and (weights fingerprint, M): a budget
#: search or a sweep asks OWL for plans at many targets, and the ratios do not depend on the target.
_RATIOS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def outlier_ratios(loaded, statistics, m: float = DEFAULT_M) -> list[float]:
    """OWL's layer outlier ratio D_l in % (step 1-2 of the recipe) for every decoder layer of `loaded`."""
    key = (loaded.fingerprint, float(m))
    try:
        known = _RATIOS.setdefault(statistics, {})
    except TypeError:  # not weakly referenceable: compute every time
        known = {}
    if key not in known:
        layers = len(loaded.adapter.decoder_layers(loaded.model))
        known[key] = [outlier_ratio(layer_scores(loaded, statistics, i), m) for i in range(layers)]
    return list(known[key])


def owl_sparsities(ratios: Sequence[float], target: float, lam: float = DEFAULT_LAMBDA) -> list[float]:
    """Per-layer sparsities from outlier ratios (step 3): target - (n_l - mean n), n = ratios scaled to [0, 2 lam].

    All ratios equal (nothing to tell the layers apart) gives the target everywhere.
    """
    r = np.asarray(ratios, dtype=np.float64)
    spread = float(r.max() - r.min()) if r.size else 0.0
    scaled = (r - r.min()) / spread * 2.0 * lam if spread > 0 else np.zeros_like(r)
    return [float(target - (v - scaled.mean())) for v in scaled]


def _option(options, name: str, default: float, low: float, high: float, meaning: str) -> float:
    value = options.get(name, default)
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = float("nan")
    if not low <= value <= high:
        raise ConfigError(f"OWL's {name} ({meaning}) must be a number in [{low:g}, {high:g}]; got "
                          f"{options.get(name)!r}.")
    return value


def allocate_owl(inputs: Any, target: float) -> SparsityPlan:
    """The OWL plan for global target sparsity `target` (by parameters).

    inputs: `AllocationInputs` with `statistics` (dense "act_sq" statistics) and options
    {"M": outlier threshold in multiples of the layer's mean score (default 5), "lambda": the largest
    difference from the target a layer may get, as a fraction (default 0.08), "min_sparsity",
    "max_sparsity": per-module bounds (defaults 0 and MAX_SPARSITY)}. M and lambda are recorded in the plan.
    """
    options = inputs.options or {}
    m = _option(options, "M", DEFAULT_M, 1e-6, 1e6, "outlier threshold in multiples of the mean score")
    lam = _option(options, "lambda", DEFAULT_LAMBDA, 0.0, 0.5, "largest sparsity difference from the target")
    loaded = inputs.loaded
    kinds = tuple(loaded.adapter.module_kinds)
    weights = size_table(module_sizes(loaded), kinds)
    lo, hi = bounds_table(options.get("min_sparsity", 0.0), options.get("max_sparsity", MAX_SPARSITY),
                          weights.shape, kinds)
    per_layer = owl_sparsities(outlier_ratios(loaded, inputs.statistics, m), target, lam)
    preferences = np.repeat(np.asarray(per_layer, dtype=np.float64)[:, None], len(kinds), axis=1)
    values = fit_offset(preferences, weights, target, lo, hi)
    return SparsityPlan(kinds, values.tolist(), "owl", float(target), (("M", m), ("lambda", lam)))

"""Allocators: each hits its global target by parameters and respects its bounds; OWL's per-layer sparsities equal
a hand computation of the paper's recipe; the sensitivity allocator puts less sparsity where a map says cost is
higher and minimises the predicted cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pruning_core.allocation.allocators import ALLOCATORS, AllocationInputs, make_plan
from pruning_core.allocation.fitting import bounds_table, fit_offset
from pruning_core.plan import module_sizes
from pruning_core.allocation.sensitivity_guided import cost_curve, greedy_fill, predicted_cost
from pruning_core.errors import ConfigError
from pruning_core.models import weight_matrix
from pruning_core.models.tiny import tiny_model
from pruning_core.prune import collect_statistics

LAYERS = 4


@pytest.fixture(scope="module")
def model_and_stats():
    lm = tiny_model("llama", layers=LAYERS)
    # plant outliers of different strength per layer, so the layers' outlier ratios differ
    with torch.no_grad():
        for i, layer in enumerate(lm.adapter.decoder_layers(lm.model)):
            for module in lm.adapter.layer_linears(layer).values():
                w = weight_matrix(module)
                w[:, : 2 * i + 1] *= 8.0
    ids = torch.randint(0, len(lm.tokenizer), (4, 32), generator=torch.Generator().manual_seed(0))
    return lm, collect_statistics(lm, ids, "act_sq")


def global_sparsity(lm, plan) -> float:
    return plan.global_sparsity(module_sizes(lm))


def hand_outlier_ratios(lm, stats, m):
    """The recipe written out: |W| * sqrt(mean x^2) over all linears of a layer, % above m x the layer's mean."""
    ratios = []
    for i, layer in enumerate(lm.adapter.decoder_layers(lm.model)):
        scores = []
        for kind, module in lm.adapter.layer_linears(layer).items():
            act_sq = stats.by_module[lm.adapter.qualified_name(i, kind)].act_sq
            scores.append((weight_matrix(module).abs() * act_sq.sqrt()[None, :]).flatten().double())
        everything = torch.cat(scores)
        ratios.append(100.0 * float((everything > m * everything.mean()).double().mean()))
    return ratios, everything.numel()


def test_registry_holds_the_three_allocators():
    assert {"uniform", "owl", "sensitivity"} <= set(ALLOCATORS)
    assert ALLOCATORS["owl"].needs == "act_sq" and ALLOCATORS["sensitivity"].needs == "sensitivity"


@pytest.mark.parametrize("m,lam", [(5.0, 0.08), (2.0, 0.2)])
def test_owl_layers_equal_a_hand_computation(model_and_stats, m, lam):
    lm, stats = model_and_stats
    target = 0.6
    plan = make_plan("owl", AllocationInputs(lm, statistics=stats, options={"M": m, "lambda": lam}), target)
    ratios, per_layer_weights = hand_outlier_ratios(lm, stats, m)
    assert max(ratios) > min(ratios)  # the planted outliers tell the layers apart
    r = np.array(ratios)
    scaled = (r - r.min()) / (r.max() - r.min()) * 2 * lam
    density = scaled - scaled.mean() + (1 - target)
    expected = 1 - density
    # one weight on either side of the threshold (float rounding) moves a ratio by 100 / weights-per-layer %
    slack = 2 * lam * (100.0 / per_layer_weights) / (r.max() - r.min()) + 1e-9
    for i in range(LAYERS):
        assert set(plan.values[i]) == {plan.values[i][0]}  # one value per layer
        assert plan.values[i][0] == pytest.approx(expected[i], abs=slack), i
    assert max(v[0] for v in plan.values) - min(v[0] for v in plan.values) == pytest.approx(2 * lam, abs=slack)
    assert global_sparsity(lm, plan) == pytest.approx(target, abs=1e-3)  # within 0.1 percentage point
    assert dict(plan.settings) == {"M": m, "lambda": lam}
    assert plan.allocator == "owl" and plan.target == target
    # the layer with the most outliers is pruned least
    assert int(np.argmin([v[0] for v in plan.values])) == int(np.argmax(ratios))


def test_owl_keeps_the_target_when_bounds_clip(model_and_stats):
    lm, stats = model_and_stats
    options = {"M": 2.0, "lambda": 0.2, "min_sparsity": 0.45, "max_sparsity": 0.55}
    plan = make_plan("owl", AllocationInputs(lm, statistics=stats, options=options), 0.5)
    values = [v for row in plan.values for v in row]
    assert min(values) >= 0.45 and max(values) <= 0.55
    assert max(values) == 0.55  # the bound did clip (unclipped the spread would be 0.4)
    assert global_sparsity(lm, plan) == pytest.approx(0.5, abs=1e-3)


def test_fit_offset_hits_the_target_by_parameters_not_by_cells():
    weights = np.array([[100.0, 10.0], [100.0, 10.0]])
    preferences = np.array([[0.2, 0.9], [0.4, 0.9]])
    lo, hi = bounds_table(0.0, 0.95, weights.shape)
    values = fit_offset(preferences, weights, 0.5, lo, hi)
    assert (values * weights).sum() / weights.sum() == pytest.approx(0.5, abs=1e-9)
    assert values.max() <= 0.95 and values.min() >= 0.0
    assert values[1, 0] - values[0, 0] == pytest.approx(0.2)  # unclipped cells keep their differences
    with pytest.raises(ConfigError, match="cannot be reached"):
        fit_offset(preferences, weights, 0.97, lo, hi)


# ---------------------------------------------------------------------------------------------- sensitivity

def synthetic_sensitivity(lm, base, sparsities=(0.5, 0.7), power=3.0, method="wanda", metric="exact"):
    """A sensitivity result whose cell (i, k) costs base[i][k] * (s / 0.5)^power at each sparsity s."""
    kinds = list(lm.adapter.module_kinds)
    maps = [{"layers": list(range(len(base))), "modules": kinds, "metric": metric, "method": method,
             "sparsity": s, "values": [[b * (s / 0.5) ** power for b in row] for row in base]}
            for s in sparsities]
    return {"maps": maps, "correlations": []}


def test_sensitivity_spares_the_costly_layer_and_hits_the_target(model_and_stats):
    lm, _ = model_and_stats
    kinds = lm.adapter.module_kinds
    base = [[(10.0 if i == 0 else 1.0) * (1 + 0.1 * k) for k in range(len(kinds))] for i in range(LAYERS)]
    sensitivity = synthetic_sensitivity(lm, base)
    for target in (0.5, 0.7, 0.85):
        plan = make_plan("sensitivity", AllocationInputs(lm, sensitivity=sensitivity), target)
        assert global_sparsity(lm, plan) == pytest.approx(target, abs=1e-3)
        values = np.array(plan.values)
        assert values.min() >= 0.0 and values.max() <= 0.95 + 1e-12
        for k in range(len(kinds)):
            assert values[0, k] < values[1:, k].min(), (target, kinds[k])
        assert dict(plan.settings)["metric"] == "exact" and plan.allocator == "sensitivity"
        uniform = make_plan("uniform", AllocationInputs(lm), target)
        assert predicted_cost(plan, sensitivity) < predicted_cost(uniform, sensitivity)


def test_sensitivity_respects_bounds(model_and_stats):
    lm, _ = model_and_stats
    kinds = lm.adapter.module_kinds
    base = [[(10.0 if i == 0 else 1.0) for _ in kinds] for i in range(LAYERS)]
    options = {"min_sparsity": 0.4, "max_sparsity": 0.8}
    plan = make_plan("sensitivity", AllocationInputs(lm, sensitivity=synthetic_sensitivity(lm, base),
                                                      options=options), 0.7)
    values = np.array(plan.values)
    assert values.min() >= 0.4 - 1e-12 and values.max() <= 0.8 + 1e-12
    assert values[1:].max() == pytest.approx(0.8)  # cheap layers go to their bound
    assert global_sparsity(lm, plan) == pytest.approx(0.7, abs=1e-3)
    with pytest.raises(ConfigError, match="cannot be reached"):
        make_plan("sensitivity", AllocationInputs(lm, sensitivity=synthetic_sensitivity(lm, base),
                                                  options=options), 0.85)


def test_noisy_cells_become_a_monotone_curve():
    points = np.array([0.5, 0.7])
    curve = cost_curve(points, np.array([-0.02, 0.01]), np.linspace(0, 0.95, 96))
    assert (np.diff(curve) >= -1e-15).all() and curve.min() >= 0.0
    falling = cost_curve(points, np.array([0.3, 0.1]), np.array([0.5, 0.6, 0.7, 0.9]))
    assert falling[1] == pytest.approx(0.3) and falling[2] == pytest.approx(0.3) and falling[3] > 0.3


def test_greedy_fill_finds_the_two_module_optimum():
    """Against a brute-force scan: two modules of different size and cost, one global constraint."""
    points = np.array([0.5, 0.7])
    costs = np.array([[[1.0, 4.0], [0.3, 3.0]]])  # (1 layer, 2 modules, 2 sparsities)
    weights = np.array([[300.0, 100.0]])
    lo, hi = bounds_table(0.0, 0.95, weights.shape)
    target = 0.6
    values = greedy_fill(points, costs, weights, lo, hi, target)

    def total(s0, s1):
        return (cost_curve(points, costs[0, 0], np.array([s0]))[0]
                + cost_curve(points, costs[0, 1], np.array([s1]))[0])

    best = min(total(s0, (target * 400 - 300 * s0) / 100)
               for s0 in np.linspace(0, 0.95, 9501) if 0 <= (target * 400 - 300 * s0) / 100 <= 0.95)
    assert total(*values[0]) <= best * 1.01
    assert (values[0] * weights[0]).sum() / 400 == pytest.approx(target, abs=1e-9)


def test_sensitivity_needs_two_sparsities_of_one_method(model_and_stats):
    lm, _ = model_and_stats
    base = [[1.0] * len(lm.adapter.module_kinds) for _ in range(LAYERS)]
    with pytest.raises(ConfigError, match="two or more sparsities"):
        make_plan("sensitivity", AllocationInputs(lm, sensitivity=synthetic_sensitivity(lm, base, (0.5,))), 0.6)
    with pytest.raises(ConfigError, match="needs a sensitivity map"):
        make_plan("sensitivity", AllocationInputs(lm), 0.6)
    mixed = synthetic_sensitivity(lm, base)
    mixed["maps"] += synthetic_sensitivity(lm, base, method="magnitude")["maps"]
    with pytest.raises(ConfigError, match="several methods"):
        make_plan("sensitivity", AllocationInputs(lm, sensitivity=mixed), 0.6)
    plan = make_plan("sensitivity", AllocationInputs(lm, sensitivity=mixed, options={"method": "magnitude"}), 0.6)
    assert dict(plan.settings)["method"] == "magnitude"
    partial = synthetic_sensitivity(lm, base[:2])
    with pytest.raises(ConfigError, match="every module"):
        make_plan("sensitivity", AllocationInputs(lm, sensitivity=partial), 0.6)

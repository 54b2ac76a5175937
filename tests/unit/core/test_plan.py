"""Sparsity plans: global sparsity by parameter count, every method prunes each module at its planned value,
N:M plans may leave modules dense, and a plan round-trips through its dict form."""

from __future__ import annotations

import pytest
import torch

from pruning_core.plan import SparsityPlan, module_sizes
from pruning_core.errors import ConfigError
from pruning_core.models.tiny import tiny_model
from pruning_core.prune import PruneConfig, prune_model


def windows(n=4, seqlen=16, vocab=300, seed=0):
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def varied_plan(lm) -> SparsityPlan:
    kinds = lm.adapter.module_kinds
    layers = len(module_sizes(lm))
    return SparsityPlan(kinds, [[round(0.1 + 0.1 * ((i + j) % 7), 2) for j in range(len(kinds))]
                                for i in range(layers)], allocator="test")


def test_global_sparsity_is_counted_over_parameters():
    lm = tiny_model("llama", layers=2)
    sizes = module_sizes(lm)
    plan = varied_plan(lm)
    zeros = sum(plan.sparsity(i, k) * sizes[i][k] for i in range(len(sizes)) for k in plan.kinds)
    total = sum(n for layer in sizes for n in layer.values())
    assert plan.global_sparsity(sizes) == pytest.approx(zeros / total, abs=1e-12)
    # not the mean of the cells: modules differ in size
    cells = [v for row in plan.values for v in row]
    assert plan.global_sparsity(sizes) != pytest.approx(sum(cells) / len(cells), abs=1e-4)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_every_method_prunes_each_module_at_its_planned_value(method):
    lm = tiny_model("llama", layers=2)
    plan = varied_plan(lm)
    config = PruneConfig(method, "unstructured").with_plan(lm, plan)
    result = prune_model(lm, windows(), config)
    for i in range(plan.layers):
        for kind in plan.kinds:
            mask = result.masks[lm.adapter.qualified_name(i, kind)]
            expected = plan.sparsity(i, kind) * mask.numel()
            # Wanda cuts per output row, so it may round once per row
            assert abs(int((~mask).sum()) - expected) <= mask.shape[0] / 2 + 1, (i, kind)
    assert result.sparsity == pytest.approx(config.sparsity, abs=1e-3)
    assert config.to_dict()["plan"]["values"] == [list(r) for r in plan.values]


def test_nm_plan_leaves_chosen_modules_dense():
    lm = tiny_model("llama", layers=2)
    kinds = lm.adapter.module_kinds
    plan = SparsityPlan(kinds, [[0.0] * len(kinds), [0.5] * len(kinds)], allocator="test")
    config = PruneConfig("wanda", "2:4").with_plan(lm, plan)
    result = prune_model(lm, windows(), config)
    for kind in kinds:
        assert bool(result.masks[lm.adapter.qualified_name(0, kind)].all())
        mask = result.masks[lm.adapter.qualified_name(1, kind)]
        groups = mask.reshape(mask.shape[0], -1, 4) if kind != "down" or mask.shape[1] % 4 == 0 else None
        assert groups is not None and bool((groups.sum(-1) <= 2).all())
    assert 0.2 < config.sparsity < 0.3


def test_plan_round_trips_and_rejects_bad_input():
    lm = tiny_model("llama", layers=2)
    plan = varied_plan(lm)
    again = SparsityPlan.from_dict(plan.to_dict())
    assert again == plan and again.digest() == plan.digest()
    with pytest.raises(ConfigError, match="one value per kind"):
        SparsityPlan(plan.kinds, [[0.5]], allocator="x")
    with pytest.raises(ConfigError, match="outside"):
        SparsityPlan(plan.kinds, [[1.5] * len(plan.kinds)])
    other = tiny_model("llama", layers=3)
    with pytest.raises(ConfigError, match="make a plan for this model"):
        PruneConfig("wanda").with_plan(other, plan)
    with pytest.raises(ConfigError, match="not both"):
        PruneConfig("wanda", plan=plan, layer_sparsity={0: 0.2}).validate()


@pytest.mark.parametrize("document, words", [
    ({"kinds": ["q"], "values": [["half"]]}, "must be numbers"),
    ([["q"], [[0.5]]], "needs 'kinds' and 'values'"),
    ({"kinds": ["q"], "values": 0.5}, "needs 'kinds' and 'values'"),
    ({"kinds": ["q"], "values": [[0.5]], "settings": ["M", 5]}, "needs 'kinds' and 'values'"),
])
def test_a_malformed_plan_document_is_one_sentence(document, words):
    from pruning_core.errors import ConfigError
    from pruning_core.plan import SparsityPlan

    with pytest.raises(ConfigError, match=words):
        SparsityPlan.from_dict(document)

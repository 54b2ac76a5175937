"""Exporting a sparsity plan: masks round-trip bit-exactly, the manifest records the plan and its allocator,
and the llm-compressor recipe carries the per-layer (or per-module) sparsities of the plan."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from pruning_core.allocation.allocators import ALLOCATORS, Allocator
from pruning_core.plan import SparsityPlan, module_sizes
from pruning_core.errors import ConfigError
from pruning_core.models import load_model
from pruning_core.mask_files import load_masks
from pruning_core.allocation.setting_plan import setting_config
from pruning_core.export.pipeline import ExportOptions, run_apply_mask, run_export
from pruning_core.outputs.recipe import build_recipe, validate_recipe
from pruning_core.protocol import Protocol, calibration_ids
from pruning_core.prune import PruneConfig, prune_model

PROTOCOL = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=2, batch_size=4)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


def _mixed_plan(tiny) -> SparsityPlan:
    """Layer 0 lighter than layer 1, and one module of layer 1 at its own value: not expressible per layer."""
    kinds = tiny.adapter.module_kinds
    return SparsityPlan.from_layers(kinds, [0.3, 0.6], "owl", 0.45, (("M", 5.0),)).edited(1, kinds[-1], 0.8)


def _modifier(recipe: dict) -> dict:
    (group,) = recipe["sparsity_stage"].values()
    (modifier,) = group.values()
    return modifier


def test_plan_export_records_the_plan_and_apply_mask_is_bit_exact(tiny, tmp_path):
    plan = _mixed_plan(tiny)
    options = ExportOptions(method="wanda", plan=plan.to_dict(), eval_corpora=("news",), heatmap=False,
                            prompts=(), formats=("json",), recipe=True)
    out = run_export(tiny, PROTOCOL, options, tmp_path / "export")
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["allocator"] == "edited" and manifest["plan"] == plan.to_dict()
    assert manifest["plan_digest"] == plan.digest()
    assert manifest["target_sparsity"] == pytest.approx(plan.global_sparsity(module_sizes(tiny)), abs=1e-6)
    for layer in range(plan.layers):  # each module at its planned value (Wanda keeps whole weights per row)
        for kind in tiny.adapter.module_kinds:
            measured = manifest["measured_sparsity"]["per_module"][tiny.adapter.qualified_name(layer, kind)]
            assert measured == pytest.approx(plan.sparsity(layer, kind), abs=0.02)
    assert out["report"]["setting"]["plan_digest"] == plan.digest()

    # The same config pruned here gives the masks in the file, and applying the file reproduces its weights.
    config = PruneConfig("wanda").with_plan(tiny, plan)
    expected = prune_model(tiny, calibration_ids(tiny, PROTOCOL), config, PROTOCOL.batch_size)
    masks, _ = load_masks(tmp_path / "export")
    assert set(masks) == set(expected.masks)
    assert all(torch.equal(masks[name], expected.masks[name]) for name in masks)
    fresh = load_model("tiny-llama")
    summary = run_apply_mask(fresh, tmp_path / "export")
    assert summary["allocator"] == "edited" and summary["plan_digest"] == plan.digest()
    for name, mask in expected.masks.items():
        weight = fresh.model.get_submodule(name).weight
        assert torch.equal(weight, tiny.model.get_submodule(name).weight * mask.to(weight.dtype)), name

    # The recipe: valid YAML (with its comment header), one value per module in the plan's table.
    text = (tmp_path / "export" / "recipe.yaml").read_text()
    assert "Sparsity plan by 'edited'" in text
    modifier = _modifier(yaml.safe_load(text))
    assert len(modifier["targets"]) == len(modifier["sparsity"]) == plan.layers * len(plan.kinds)
    for name, value in zip(modifier["targets"], modifier["sparsity"]):
        layer, kind = next((i, k) for i in range(plan.layers) for k in plan.kinds
                           if tiny.adapter.qualified_name(i, k) == name)
        assert value == plan.sparsity(layer, kind)
    assert modifier["targets"] == [n for n, _ in tiny.model.named_modules() if n in modifier["targets"]]


def test_layer_wise_plan_recipe_keeps_the_per_layer_list(tiny):
    plan = SparsityPlan.from_layers(tiny.adapter.module_kinds, [0.35, 0.65], "owl", 0.5)
    recipe = build_recipe(tiny, PruneConfig("sparsegpt").with_plan(tiny, plan))
    modifier = _modifier(recipe)
    assert modifier["sparsity"] == [0.35, 0.65] and modifier["targets"][0].startswith("re:")
    assert yaml.safe_load(yaml.safe_dump(recipe)) == recipe
    assert validate_recipe(recipe) in ("llmcompressor", "schema")
    with pytest.raises(ConfigError, match="no per-layer sparsity"):
        build_recipe(tiny, PruneConfig("magnitude").with_plan(tiny, plan))


def test_nm_plan_recipe_lists_only_the_modules_it_prunes(tiny):
    kinds = tiny.adapter.module_kinds
    plan = SparsityPlan.uniform(2, kinds, 0.5).edited(0, None, 0.0)  # layer 0 dense, layer 1 2:4
    config = PruneConfig("wanda", "2:4").with_plan(tiny, plan)
    modifier = _modifier(build_recipe(tiny, config))
    assert modifier["mask_structure"] == "2:4" and modifier["sparsity"] == 0.5
    assert modifier["targets"] == [tiny.adapter.qualified_name(1, k) for k in kinds]


def test_allocator_export_makes_the_plan_from_dense_statistics(tiny, tmp_path, monkeypatch):
    def deeper(inputs, target):
        assert inputs.statistics is not None
        return SparsityPlan.from_layers(inputs.loaded.adapter.module_kinds, [target - 0.1, target + 0.1],
                                        "deeper", target)

    monkeypatch.setitem(ALLOCATORS, "deeper", Allocator("deeper", "act_sq", deeper, "test"))
    options = ExportOptions(method="magnitude", sparsity=0.5, allocator="deeper", eval_corpora=("news",),
                            heatmap=False, prompts=(), formats=("json",))
    out = run_export(tiny, PROTOCOL, options, tmp_path / "export")
    assert out["manifest"]["allocator"] == "deeper"
    assert out["manifest"]["plan"]["values"][0][0] == pytest.approx(0.4)
    assert out["manifest"]["measured_sparsity"]["overall"] == pytest.approx(0.5, abs=0.01)


def test_plan_export_settings_are_checked(tiny):
    plan = _mixed_plan(tiny).to_dict()
    with pytest.raises(ConfigError, match="not both"):
        setting_config(ExportOptions(plan=plan, layer_sparsity={0: 0.4}).setting)
    with pytest.raises(ConfigError, match="Unknown allocation"):
        setting_config(ExportOptions(allocator="evenly").setting)
    with pytest.raises(ConfigError, match="kinds"):
        setting_config(ExportOptions(plan={"values": [[0.5]]}).setting)
    plain = setting_config(ExportOptions(sparsity=0.5).setting, tiny)
    assert plain.plan is None  # a uniform export keeps its plain sparsity

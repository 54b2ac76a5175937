"""The walk and the evaluation keep a cached model unmutated without a whole-model copy of its weights."""

from __future__ import annotations

import pytest
import torch

from pruning_core import metrics
from pruning_core.masks import applied_masks, masks_applied_per_forward, preserved_weights
from pruning_core.models.tiny import tiny_model
from pruning_core.prune import PruneConfig, _prune_layer, prune_model
from pruning_core.walk import capture_layer_inputs, walk_layers


def windows(n=8, seqlen=32, vocab=300, seed=0):
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_weights(before, model):
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"{key} changed"


def whole_model_copy_prune(lm, ids, config):
    """The walk as it was before per-layer restores: the whole model's weights copied around it."""
    masks, weights = {}, ({} if config.method_spec.updates_weights else None)

    def on_layer(index, layer, stats):
        _prune_layer(lm, index, layer, stats.by_kind, config, masks, weights, write=True)
        return True

    with preserved_weights(lm.model, list(lm.adapter.prunable_modules(lm.model))):
        walk_layers(lm, capture_layer_inputs(lm, ids), on_layer, need=config.method_spec.needs,
                    propagation="pruned", dtype=config.calib_dtype, always_changes=True)
    return masks, weights


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_per_layer_restore_gives_the_masks_of_the_whole_model_copy(method):
    """Later layers still see the pruned outputs of earlier ones: restoring a layer after its recomputation
    changes nothing that pruned propagation computes."""
    lm = tiny_model("llama")
    config = PruneConfig(method, "unstructured", 0.5, calib_dtype="float32")
    before = snapshot(lm.model)
    masks, weights = whole_model_copy_prune(lm, windows(), config)
    result = prune_model(lm, windows(), config)
    assert_same_weights(before, lm.model)
    assert set(result.masks) == set(masks)
    assert all(torch.equal(result.masks[n], masks[n]) for n in masks)
    if weights is not None:
        assert all(torch.equal(result.weights[n], weights[n]) for n in weights)


def test_walk_keeps_at_most_the_current_layer_changed():
    lm = tiny_model("llama")
    before = snapshot(lm.model)
    layers = lm.adapter.decoder_layers(lm.model)
    seen = []

    def on_layer(index, layer, stats):
        # Every other layer holds its original weights while this one is pruned.
        for other, module in enumerate(layers):
            if other == index:
                continue
            for name, value in module.state_dict().items():
                key = next(k for k in before if k.endswith(f"layers.{other}.{name}"))
                assert torch.equal(value, before[key]), f"layer {other} changed while walking {index}"
        for linear in lm.adapter.layer_linears(layer).values():
            linear.weight.data.zero_()
        seen.append(index)
        return True

    walk_layers(lm, capture_layer_inputs(lm, windows()), on_layer, need="act_sq", propagation="pruned",
                restore_each_layer=True)
    assert seen == list(range(len(layers)))
    assert_same_weights(before, lm.model)


def test_walk_restores_the_layer_when_the_handler_fails():
    lm = tiny_model("llama")
    before = snapshot(lm.model)

    def on_layer(index, layer, stats):
        for linear in lm.adapter.layer_linears(layer).values():
            linear.weight.data.zero_()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        walk_layers(lm, capture_layer_inputs(lm, windows()), on_layer, need="act_sq", propagation="pruned",
                    restore_each_layer=True)
    assert_same_weights(before, lm.model)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_per_forward_masks_give_the_perplexity_of_applied_masks(family, method):
    lm = tiny_model(family)
    result = prune_model(lm, windows(), PruneConfig(method, "unstructured", 0.5))
    ids = windows(4, 32, seed=1)
    before = snapshot(lm.model)
    with applied_masks(lm.model, result.masks, result.weights):
        whole = metrics.perplexity(lm, ids).ppl
    assert_same_weights(before, lm.model)
    with masks_applied_per_forward(lm.model, result.masks, result.weights):
        streamed = metrics.perplexity(lm, ids).ppl
    assert_same_weights(before, lm.model)
    dense = metrics.perplexity(lm, ids).ppl
    assert streamed == whole
    assert streamed != dense


def test_per_forward_masks_restore_after_a_failed_forward():
    lm = tiny_model("llama")
    result = prune_model(lm, windows(), PruneConfig("wanda", "unstructured", 0.5))
    before = snapshot(lm.model)
    name = next(iter(result.masks))
    module = lm.model.get_submodule(name)

    def fail(module, args, output):  # noqa: ARG001
        raise RuntimeError("boom")

    handle = module.register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError):
            with masks_applied_per_forward(lm.model, result.masks):
                lm.model(windows(1, 8))
    finally:
        handle.remove()
    assert_same_weights(before, lm.model)


def test_applied_masks_alone_restore_bit_identical_weights():
    """A mask without replacement weights keeps only the values it zeroes; they go back where they were."""
    lm = tiny_model("gpt2")
    before = snapshot(lm.model)
    result = prune_model(lm, windows(), PruneConfig("wanda", "unstructured", 0.6))
    with applied_masks(lm.model, result.masks):
        module = lm.model.get_submodule(next(iter(result.masks)))
        assert (module.weight == 0).float().mean() >= 0.59
    assert_same_weights(before, lm.model)

"""Keep masks held bit-packed (8 weights per byte): same masks, same perplexity, one mask unpacked at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pruning_core import evaluate
from pruning_core.mask_files import load_masks, pack_mask, save_masks, unpack_mask
from pruning_core.masks import applied_masks, masks_applied_per_forward
from pruning_core.models.tiny import tiny_model
from pruning_core.packed_masks import PackedMasks, pack_bits, packed_length, unpack_bits
from pruning_core.prune import PruneConfig, _prune_layer, prune_model
from pruning_core.protocol import Protocol


def windows(n=8, seqlen=32, vocab=300, seed=0):
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (9,), (3, 5), (13, 11), (2, 3, 7), (64, 17), ()])
def test_pack_unpack_round_trip_and_numpy_s_bit_layout(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape) + 1)) < 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_length(mask.numel())
    # The layout of the exported masks.safetensors: numpy.packbits of the flattened mask (big-endian bits).
    assert torch.equal(packed, torch.from_numpy(np.packbits(mask.reshape(-1).numpy())))
    back = unpack_bits(packed, tuple(shape))
    assert back.dtype == torch.bool and back.shape == mask.shape and torch.equal(back, mask)
    assert torch.equal(unpack_mask(pack_mask(mask), tuple(shape)), mask)


def test_a_transposed_view_and_the_padding_bits():
    mask = torch.rand(9, 5, generator=torch.Generator().manual_seed(3)) < 0.5
    view = mask.t()  # a Conv1D mask arrives as a non-contiguous view
    assert torch.equal(unpack_bits(pack_bits(view), (5, 9)), view)
    ones = torch.ones(13, dtype=torch.bool)
    assert pack_bits(ones).tolist() == [255, 0b11111000]  # the last byte's unused bits are zero


def test_packed_masks_read_as_the_dict_they_replace():
    gen = torch.Generator().manual_seed(0)
    plain = {"a": torch.rand(37, 29, generator=gen) < 0.3, "b": torch.rand(5, 3, generator=gen) < 0.7,
             "c": (torch.rand(4, 4, generator=gen) < 0.5).to(torch.float16)}
    packed = PackedMasks(plain)
    assert list(packed) == list(plain) and len(packed) == 3 and "b" in packed
    for name, mask in plain.items():
        assert packed[name].dtype == mask.dtype and packed.shape(name) == mask.shape
        assert torch.equal(packed[name], mask)
    assert packed.packed_bytes == packed_length(37 * 29) + packed_length(15) + packed_length(16)
    packed["b"] = ~plain["b"]
    assert torch.equal(packed["b"], ~plain["b"])
    del packed["c"]
    assert list(packed) == ["a", "b"]


def test_evaluation_unpacks_each_mask_only_during_its_module_s_forward():
    lm = tiny_model("llama")
    result = prune_model(lm, windows(), PruneConfig("wanda", sparsity=0.5))
    assert isinstance(result.masks, PackedMasks)
    reads = []

    class Counting(PackedMasks):
        def __getitem__(self, name):
            reads.append(name)
            return super().__getitem__(name)

    counting = Counting(result.masks)
    with masks_applied_per_forward(lm.model, counting):
        assert reads == []  # entering checks shapes without unpacking
        lm.model(windows(1, 8))
    assert sorted(reads) == sorted(counting)  # each mask once per forward, each dropped after its module


def test_a_sweep_point_s_masks_and_perplexity_are_those_of_plain_bool_masks():
    """The sweep's pruned-propagation Wanda point (prune_model, then evaluate_setting) gives the masks the
    plain dict of bool tensors held before, and the same perplexity to the last digit."""
    lm = tiny_model("llama")
    config = PruneConfig("wanda", sparsity=0.5)
    result = prune_model(lm, windows(), config, batch_size=4)
    plain: dict = {}  # what prune_model held before: one bool tensor per module, all at once
    lm_copy = tiny_model("llama")
    lm_copy.model.load_state_dict(lm.model.state_dict())
    from pruning_core.walk import capture_layer_inputs, walk_layers

    def on_layer(index, layer, stats):
        _prune_layer(lm_copy, index, layer, stats.by_kind, config, plain, None, write=True)
        return True

    walk_layers(lm_copy, capture_layer_inputs(lm_copy, windows(), 4), on_layer, need="act_sq",
                propagation="pruned", dtype=config.calib_dtype, always_changes=True, restore_each_layer=True)
    assert list(result.masks) == list(plain)
    assert all(torch.equal(result.masks[name], plain[name]) for name in plain)
    assert result.masks.packed_bytes == sum(packed_length(mask.numel()) for mask in plain.values())

    protocol = Protocol(calib="news", nsamples=8, seqlen=32, eval_windows=4, batch_size=4)
    eval_ids = {"news": windows(4, 32, seed=1)}
    packed_ppl = evaluate.evaluate_setting(lm, protocol, ["news"], result, dense=False, eval_ids=eval_ids)
    plain_ppl = evaluate.evaluate_setting(lm, protocol, ["news"], plain, dense=False, eval_ids=eval_ids)
    assert packed_ppl.pruned_ppl == plain_ppl.pruned_ppl  # exact, not approximately


def read_file(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "masks.safetensors"), framework="pt") as handle:
        return handle.metadata(), {name: handle.get_tensor(name).tolist() for name in handle.keys()}  # noqa: SIM118


def test_applied_masks_restores_bit_identically_from_packed_masks_and_exports_the_same_file(tmp_path):
    lm = tiny_model("llama")
    result = prune_model(lm, windows(), PruneConfig("wanda", sparsity=0.5))
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    with applied_masks(lm.model, result.masks):
        for name in result.masks:
            weight = lm.model.get_submodule(name).weight
            assert torch.equal(weight == 0, ~result.masks[name] | (before[f"{name}.weight"] == 0))
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())
    packed_manifest = save_masks(result.masks, tmp_path / "packed")
    plain_manifest = save_masks(dict(result.masks.items()), tmp_path / "plain")
    # The same tensors and metadata (safetensors orders its metadata by hash, so the files' bytes may differ).
    assert read_file(tmp_path / "packed") == read_file(tmp_path / "plain")
    assert packed_manifest["measured_sparsity"] == plain_manifest["measured_sparsity"]
    loaded, _ = load_masks(tmp_path / "packed")
    from pruning_core.sizes.measure import masks_digest
    from pruning_core.store import tensors_hash

    assert tensors_hash(result.masks) == tensors_hash(loaded)  # the digest keying sizes sees the same tensors
    assert masks_digest(result.masks) == masks_digest(loaded)
    assert all(torch.equal(loaded[name], result.masks[name]) for name in result.masks)

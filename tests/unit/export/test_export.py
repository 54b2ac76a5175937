"""Masks export: bit-exact round trips, re-application, refusal of foreign masks, pruned model reload."""

from __future__ import annotations

import json

import pytest
import torch

from pruning_core.errors import ConfigError, PruneScopeError
from pruning_core.mask_files import (
    MASK_FILE,
    apply_mask_dir,
    load_masks,
    manifest_info_for,
    pack_mask,
    save_masks,
    save_pruned_model,
    unpack_mask,
)
from pruning_core.metrics import perplexity
from pruning_core.models import load_model
from pruning_core.prune import PruneConfig, prune_model
from pruning_core.models.tiny import tiny_model


def _ids(n: int, seqlen: int, seed: int, vocab: int = 300) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, seqlen), generator=generator)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def wanda_result(tiny):
    return prune_model(tiny, _ids(4, 32, 0), PruneConfig("wanda", "unstructured", 0.5))


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (8, 8), (13, 7), (2, 3, 5), (64, 129)])
def test_pack_unpack_is_bit_exact_for_odd_shapes(shape):
    generator = torch.Generator().manual_seed(sum(shape))
    mask = torch.rand(shape, generator=generator) > 0.4
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8
    assert packed.numel() == (mask.numel() + 7) // 8
    assert torch.equal(unpack_mask(packed, shape), mask)


def test_unpack_refuses_wrong_byte_count():
    with pytest.raises(ConfigError, match="damaged"):
        unpack_mask(torch.zeros(3, dtype=torch.uint8), (5, 5))


def test_masks_round_trip_and_manifest(tmp_path, tiny, wanda_result):
    manifest = save_masks(wanda_result.masks, tmp_path, manifest_info_for(tiny, wanda_result))
    masks, loaded_manifest = load_masks(tmp_path)
    assert set(masks) == set(wanda_result.masks)
    for name, mask in wanda_result.masks.items():
        assert torch.equal(masks[name], mask), name
    assert loaded_manifest == json.loads(json.dumps(manifest, default=str))
    assert manifest["model"]["fingerprint"] == tiny.fingerprint
    assert manifest["weights_updated"] is False
    assert manifest["measured_sparsity"]["overall"] == pytest.approx(0.5, abs=0.01)
    assert set(manifest["measured_sparsity"]["per_module"]) == set(masks)
    assert manifest["model"]["module_shapes"]["model.layers.0.self_attn.q_proj"] == \
        list(wanda_result.masks["model.layers.0.self_attn.q_proj"].shape)
    # bit-packed: about 1 bit per weight
    weights = sum(m.numel() for m in masks.values())
    assert (tmp_path / MASK_FILE).stat().st_size < weights / 8 + 4096


def test_tampered_mask_file_is_refused(tmp_path, tiny, wanda_result):
    save_masks(wanda_result.masks, tmp_path, manifest_info_for(tiny, wanda_result))
    data = bytearray((tmp_path / MASK_FILE).read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / MASK_FILE).write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="sha256"):
        load_masks(tmp_path)


def test_reapplying_reproduces_perplexity_exactly(tmp_path, tiny, wanda_result):
    eval_ids = _ids(2, 32, 1)
    with wanda_result.applied(tiny):
        expected = perplexity(tiny, eval_ids).ppl
    dense = perplexity(tiny, eval_ids).ppl
    save_masks(wanda_result.masks, tmp_path, manifest_info_for(tiny, wanda_result))
    with apply_mask_dir(tiny, tmp_path) as applied:
        assert applied["sparsity"]["overall"] == pytest.approx(wanda_result.sparsity, abs=1e-9)
        assert perplexity(tiny, eval_ids).ppl == expected
    assert perplexity(tiny, eval_ids).ppl == dense  # restored
    fresh = load_model("tiny-llama")
    result = apply_mask_dir(fresh, tmp_path, permanent=True)
    assert result["sparsity"]["overall"] == pytest.approx(wanda_result.sparsity, abs=1e-9)
    assert perplexity(fresh, eval_ids).ppl == expected


def test_mask_for_another_model_is_refused(tmp_path, tiny, wanda_result):
    save_masks(wanda_result.masks, tmp_path, manifest_info_for(tiny, wanda_result))
    other = tiny_model("llama", seed=1)
    with pytest.raises(PruneScopeError) as info, apply_mask_dir(other, tmp_path):
        pass
    message = str(info.value)
    assert tiny.fingerprint in message and other.fingerprint in message
    assert "re-export" in message


def test_mask_with_other_shapes_is_refused(tmp_path, tiny, wanda_result):
    save_masks(wanda_result.masks, tmp_path, manifest_info_for(tiny, wanda_result))
    bigger = tiny_model("llama", hidden=128)
    with pytest.raises(ConfigError, match="shape"):
        apply_mask_dir(bigger, tmp_path, permanent=True, check_fingerprint=False)


def test_sparsegpt_manifest_says_weights_are_part_of_the_model(tmp_path, tiny):
    result = prune_model(tiny, _ids(4, 32, 0), PruneConfig("sparsegpt", "2:4"))
    manifest = save_masks(result.masks, tmp_path, manifest_info_for(tiny, result))
    assert manifest["weights_updated"] is True
    assert "not of this mask" in manifest["weights_note"]


def test_saved_pruned_model_reloads_with_same_perplexity(tmp_path, tiny):
    from transformers import AutoModelForCausalLM

    from pruning_core.models import LoadedModel

    result = prune_model(tiny, _ids(4, 32, 0), PruneConfig("sparsegpt", "unstructured", 0.5))
    eval_ids = _ids(2, 32, 2)
    with result.applied(tiny):
        expected = perplexity(tiny, eval_ids).ppl
    before = tiny.fingerprint
    save_pruned_model(tiny, result, tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").is_file()
    from pruning_core.models import weight_fingerprint

    assert weight_fingerprint(tiny.model, tiny.adapter) == before  # in-memory model restored
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    reloaded = LoadedModel(model, tiny.tokenizer, "saved", "saved", tiny.adapter)
    assert perplexity(reloaded, eval_ids).ppl == pytest.approx(expected, rel=1e-6)


def test_cli_export_writes_every_file_and_apply_mask_verifies(tmp_path, capsys):
    from pruning_core.cli import main

    out = tmp_path / "out"
    status = main(["export", "--model", "tiny-llama", "--calib", "news", "--eval", "news", "--nsamples", "4",
                   "--seqlen", "32", "--eval-windows", "2", "--method", "wanda", "--sparsity", "0.5",
                   "--recipe", "--save-model", "--max-new-tokens", "4", "--prompt", "<b>hi</b>", "--out", str(out)])
    assert status == 0
    for name in ("masks.safetensors", "manifest.json", "report.html", "report.md", "report.json", "recipe.yaml",
                 "pruned-model/model.safetensors", "pruned-model/config.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    pruned = report["ppl"]["pruned"]["news"]
    # The report's heatmap is the second-order estimate, never without its measured agreement with exact.
    assert report["sensitivity"]["metric"] == "fisher"
    agreement = report["sensitivity"]["agreement"]
    assert -1 <= agreement["spearman"] <= 1 and agreement["cells"] > 0
    assert f"{agreement['spearman']:.2f} (Spearman)" in report["sensitivity_note"]
    assert "Plotly.newPlot" in (out / "report.html").read_text()
    assert "<b>hi</b>" not in (out / "report.html").read_text()
    # The command says what the files weigh as the report does: measured 16-bit safetensors, runtimes named.
    printed = capsys.readouterr().out
    size = next(s for s in report["summary"] if "16-bit safetensors (loaded by transformers, vLLM)" in s)
    assert size in printed and "the same as the dense model" in size
    assert main(["apply-mask", "--model", "tiny-llama", "--mask", str(out), "--eval", "news"]) == 0
    printed = capsys.readouterr().out
    assert "verified" in printed and f"news: perplexity {pruned:.3f}" in printed
    # a mask for another model: exit 2 with a message, nothing written
    bad = tmp_path / "bad"
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["model"]["fingerprint"] = "0" * 16
    bad.mkdir()
    (bad / "manifest.json").write_text(json.dumps(manifest))
    (bad / "masks.safetensors").write_bytes((out / "masks.safetensors").read_bytes())
    assert main(["apply-mask", "--model", "tiny-llama", "--mask", str(bad)]) == 2
    assert "fingerprint 0000000000000000" in capsys.readouterr().err


def test_cli_export_bad_input_exits_2(tmp_path, capsys):
    from pruning_core.cli import main

    assert main(["export", "--model", "tiny-llama", "--method", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_recipe_matches_setting(tiny):
    from pruning_core.outputs.recipe import build_recipe, validate_recipe

    recipe = build_recipe(tiny, PruneConfig("sparsegpt", "2:4"))
    modifier = recipe["sparsity_stage"]["sparsity_modifiers"]["SparseGPTModifier"]
    assert modifier["mask_structure"] == "2:4" and modifier["sparsity"] == 0.5
    assert modifier["ignore"] == ["re:.*lm_head"]
    assert validate_recipe(recipe) in ("llmcompressor", "schema")
    per_layer = build_recipe(tiny, PruneConfig("wanda", "unstructured", 0.5, layer_sparsity={1: 0.7},
                                               targets=("q", "k", "v", "o", "gate", "up")))
    modifier = per_layer["sparsity_stage"]["sparsity_modifiers"]["WandaPruningModifier"]
    assert modifier["sparsity"] == [0.5, 0.7]
    assert any("down_proj" in pattern for pattern in modifier["ignore"])
    import yaml

    from pruning_core.outputs.recipe import recipe_yaml

    assert yaml.safe_load(recipe_yaml(recipe)) == recipe  # "2:4" survives YAML (not read as a base-60 number)

"""Sizes measured on the files written: every byte count equals a file's size on disk, a pruned model saved the
ordinary way weighs what the dense one weighs, a structured folder is smaller, measurements are cached, and the
sentences name the format and the runtime (tiny models: save, stat, compare)."""

from __future__ import annotations

import pytest
import torch

from pruning_core import claims
from pruning_core.masks import Structure, keep_mask_from_scores
from pruning_core.models import load_model
from pruning_core.models.tiny import tiny_model
from pruning_core.sizes import measure
from pruning_core.sizes.files import FORMATS
from pruning_core.sizes.records import measured, sizes_from_masks, structured_sizes
from pruning_core.store import Store
from pruning_core.structured import StructuredConfig, prune_structured


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


def _masks(loaded, structure: Structure, sparsity: float) -> dict[str, torch.Tensor]:
    return {name: keep_mask_from_scores(module.weight.detach().abs(), sparsity, structure)
            for name, module in loaded.adapter.prunable_modules(loaded.model).items()}


def _weights_file_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def test_dense_and_pruned_sizes_are_the_bytes_of_the_files_written(tiny, tmp_path):
    masks = _masks(tiny, Structure(2, 4), 0.0)
    before = {n: p.detach().clone() for n, p in tiny.model.named_parameters()}
    sizes = sizes_from_masks(tiny, masks, "2:4")
    dense, pruned = measured(sizes, "dense"), measured(sizes, "pruned")
    # Save the same way by hand and stat the files: the measured bytes are exactly these.
    measure.save_sixteen_bit(tiny.model, tmp_path / "dense")
    assert dense["weight_bytes"] == _weights_file_bytes(tmp_path / "dense")
    assert dense["total_bytes"] == sum(p.stat().st_size for p in (tmp_path / "dense").iterdir())
    assert {f["name"] for f in dense["files"]} == {p.name for p in (tmp_path / "dense").iterdir()}
    # Zeros are stored: the pruned model's 16-bit safetensors are exactly as large as the dense model's.
    assert pruned["weight_bytes"] == dense["weight_bytes"] and pruned["format"] == "safetensors-16bit"
    assert all(torch.equal(before[n], p) for n, p in tiny.model.named_parameters())  # the model is restored
    # The file is what a runtime loads: plain transformers reads it back in 16 bits, with the zeros in place.
    from transformers import AutoModelForCausalLM

    from pruning_core.masks import applied_masks

    with applied_masks(tiny.model, masks):
        measure.save_sixteen_bit(tiny.model, tmp_path / "pruned")
    assert _weights_file_bytes(tmp_path / "pruned") == pruned["weight_bytes"]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    name = next(iter(masks))
    weight = reloaded.get_submodule(name).weight
    assert weight.dtype == torch.bfloat16
    assert torch.equal(weight == 0, ~masks[name] | (tiny.model.get_submodule(name).weight.to(torch.bfloat16) == 0))
    # Every byte count the sentence shows is a file's size on disk.
    sentence = claims.size_sentence(sizes)
    assert claims.format_bytes(_weights_file_bytes(tmp_path / "pruned")) in sentence
    assert [r["bytes"] for r in claims.size_rows(sizes)] == [_weights_file_bytes(tmp_path / "dense")] * 2


def test_a_structured_folder_is_smaller_and_its_size_is_its_files(tmp_path):
    dense = tiny_model("llama", layers=2)
    pruned = prune_structured(dense, None, StructuredConfig(score="magnitude", compensate=False, ratio=0.3))
    sizes = structured_sizes(dense, pruned.loaded, loadable=pruned.loadable_with_transformers,
                             load_note=pruned.load_note)
    small, full = measured(sizes, "structured"), measured(sizes, "dense")
    measure.save_sixteen_bit(pruned.loaded.model, tmp_path / "structured")
    assert small["weight_bytes"] == _weights_file_bytes(tmp_path / "structured") < full["weight_bytes"]
    assert sizes["structured_parameters"] == sum(p.numel() for p in pruned.loaded.model.parameters())
    sentence = claims.size_sentence(sizes)
    assert claims.format_bytes(small["weight_bytes"]) in sentence and "smaller" in sentence
    assert "sparse zeros" not in sentence  # removed structure, not zeros


def test_a_measurement_is_cached_by_model_and_what_was_saved(tiny, tmp_path, monkeypatch):
    store = Store(tmp_path / "s.sqlite")
    writes = []
    real = measure.save_sixteen_bit
    monkeypatch.setattr(measure, "save_sixteen_bit", lambda model, folder: (writes.append(folder), real(model, folder)))
    first = measure.sixteen_bit_size(tiny, "dense", store=store)
    again = measure.sixteen_bit_size(tiny, "dense", store=store)
    assert again == first and len(writes) == 1  # a rerun reads the store instead of writing again
    assert measure.dense_sixteen_bit_cached(store, tiny.fingerprint) == first
    assert measure.dense_sixteen_bit_cached(store, "another-model") is None
    masks = _masks(tiny, Structure(), 0.5)
    measure.sixteen_bit_size(tiny, "pruned", masks, store=store)
    assert len(writes) == 2  # other masks: another thing saved, measured once
    measure.sixteen_bit_size(tiny, "pruned", masks, store=store)
    assert len(writes) == 2
    assert not any(folder.exists() for folder in writes)  # the temporary folders are gone


def test_every_size_sentence_names_its_format_and_a_runtime(tiny):
    sizes = sizes_from_masks(tiny, _masks(tiny, Structure(), 0.5), "unstructured")
    sentence = claims.size_sentence(sizes)
    assert "16-bit safetensors (loaded by transformers, vLLM)" in sentence
    assert "the same as the dense model" in sentence and "zeros are stored" in sentence
    assert "bitmap" in sentence and "compressed-tensors" in sentence  # the dropped sparse forms, in one sentence
    for row in claims.size_rows(sizes):
        assert any(runtime in row["format"] for runtime in FORMATS["safetensors-16bit"][1])
    with pytest.raises(ValueError, match="Unknown size format"):
        measure.measurement_key("f", "sparse-bitmap", "pruned")


def test_a_folder_only_prunescope_loads_says_so():
    record = {"format": "safetensors-16bit", "what": "structured", "weight_bytes": 10, "runtimes":
              ["PruneScope's load_structured"], "runtime_note": "its layers have different widths"}
    label = claims.file_format(record)
    assert "PruneScope's load_structured" in label and "vLLM" not in label


def test_a_quantized_folder_is_measured_where_it_is_kept_and_worded_against_the_dense_files(tiny, tmp_path):
    # How the quantization capability uses this package: its own writer, its own format, the same wording.
    from pruning_core.sizes.records import weight_counts

    folder = tmp_path / "quantized"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"q" * 50_000)  # stands in for packed integers
    (folder / "config.json").write_text("{}")
    quantized = measure.measure_written(folder, "compressed-tensors", "quantized", dtype="int4")
    assert quantized["weight_bytes"] == 50_000 and quantized["total_bytes"] == 50_002
    sizes = weight_counts(1000, 800, 800, "unstructured")  # nothing pruned: no zeros to speak of
    sizes["measured"] = [measure.sixteen_bit_size(tiny, "dense"), quantized]
    sentence = claims.size_sentence(sizes)
    assert "As compressed-tensors packed integers (loaded by transformers, vLLM) the quantized model weighs " \
           "50.0 KB, against" in sentence and "for the dense model as 16-bit safetensors" in sentence
    assert "zeros" not in sentence

"""The claims module: sizes by hand count, one wording of size and speed for what-if and report, one generation."""

from __future__ import annotations

import struct

import pytest
import torch

from pruning_core import claims
from pruning_core.errors import ConfigError
from pruning_core.masks import Structure, keep_mask_from_scores
from pruning_core.models import load_model
from pruning_core.protocol import Protocol

SETTING = {"method": "magnitude", "structure": "2:4", "sparsity": 0.5}
PROTOCOL = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=2, seed=0, dtype="float32")
PROMPT = "The history of the city begins"
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


def _masks(loaded, structure: Structure, sparsity: float) -> dict[str, torch.Tensor]:
    return {name: keep_mask_from_scores(module.weight.detach().abs(), sparsity, structure)
            for name, module in loaded.adapter.prunable_modules(loaded.model).items()}


def test_sizes_from_a_tiny_models_masks_match_a_hand_count(tiny):
    # Hand count, straight from the modules: every parameter once, the prunable linears, the kept weights.
    parameters = sum(p.numel() for p in tiny.model.parameters())
    prunable = sum(m.weight.numel() for m in tiny.adapter.prunable_modules(tiny.model).values())
    other = parameters - prunable
    for structure, sparsity in ((Structure(2, 4), 0.0), (Structure(), 0.3), (Structure(4, 8), 0.0)):
        masks = _masks(tiny, structure, sparsity)
        kept = sum(int((m.weight.detach() * masks[n]).ne(0).sum())
                   for n, m in tiny.adapter.prunable_modules(tiny.model).items())
        sizes = claims.sizes_from_masks(tiny, masks, str(structure))
        assert (sizes["parameters"], sizes["prunable_weights"], sizes["kept_weights"]) == (parameters, prunable, kept)
        assert sizes["dense_bytes"] == parameters * 2  # 16-bit values
        assert sizes["bitmap_bytes"] == -(-(other * 16 + prunable * 1 + kept * 16) // 8)
        if structure.is_nm:
            index_bits = {4: 2, 8: 3}[structure.m]
            assert sizes["nm_bytes"] == -(-(other * 16 + prunable * structure.n // structure.m * (16 + index_bits)) // 8)
        else:
            assert sizes["nm_bytes"] is None
    # A prunable module without a mask counts as fully kept.
    masks = _masks(tiny, Structure(), 0.5)
    dropped = next(iter(masks))
    numel = masks.pop(dropped).numel()
    assert claims.sizes_from_masks(tiny, masks, "unstructured")["kept_weights"] == \
        sum(int(m.sum()) for m in masks.values()) + numel


def test_structured_size_and_impossible_counts():
    sizes = claims.sizes_from_counts(1000, 800, 800, "structured", structured_parameters=600)
    assert sizes["structured_bytes"] == 1200 and sizes["nm_bytes"] is None
    assert "600 parameters" in claims.size_sentence(sizes) and "1.67x smaller" in claims.size_sentence(sizes)
    with pytest.raises(ConfigError, match="do not fit"):
        claims.sizes_from_counts(1000, 800, 900, "unstructured")


def test_size_sentence_is_honest_about_forms_that_do_not_pay_off():
    barely = claims.sizes_from_counts(1000, 800, 790, "unstructured")  # ~1 % sparsity: the bitmap costs more
    assert "larger" in claims.size_sentence(barely) and "smaller" not in claims.size_sentence(barely).split(";")[1]
    half = claims.sizes_from_counts(1000, 800, 400, "2:4")
    assert "2:4 compressed form" in claims.size_sentence(half) and "as large as the dense model" in \
        claims.size_sentence(half)


def test_speed_sentences_by_structure_and_measured():
    assert claims.speed_sentence("unstructured").startswith("No speed-up")
    two_four = claims.speed_sentence("2:4")
    assert "sparse tensor cores" in two_four and "not measured here" in two_four and "CPU" in two_four
    assert "no common fast kernels" in claims.speed_sentence("4:8")
    measured = {"device": "cpu", "decode at batch 1": {"dense_tokens_per_s": 20.0, "pruned_tokens_per_s": 25.0}}
    sentence = claims.speed_sentence("2:4", measured)
    assert "Measured on cpu" in sentence and "20.0 -> 25.0 tokens/s (1.25x)" in sentence
    with pytest.raises(ConfigError, match="tokens_per_s"):
        claims.speed_sentence("2:4", {"decode": {"dense": 1.0}})
    with pytest.raises(ConfigError, match="non-positive"):
        claims.speed_sentence("2:4", {"decode": {"dense_tokens_per_s": 0, "pruned_tokens_per_s": 1}})


def _gguf_header(path, file_type: int) -> None:
    """A GGUF v3 header: a string, an array of strings (skipped by the reader), then general.file_type."""
    def string(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    kvs = [string("general.architecture") + struct.pack("<I", 8) + string("llama"),
           string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3) + b"".join(map(string, ("a", "bc", "d"))),
           string("general.file_type") + struct.pack("<II", 4, file_type)]
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs))


def test_disk_and_memory_sizes_say_what_they_are(tmp_path):
    gguf = tmp_path / "model.gguf"
    _gguf_header(gguf, 3)  # 3 = MOSTLY_Q4_1
    assert claims.disk_form(gguf) == "GGUF Q4_1"
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text('{"torch_dtype": "bfloat16"}')
    (folder / "model.safetensors").write_bytes(b"")
    assert claims.disk_form(folder) == "safetensors, bfloat16"
    labels = claims.size_labels(134_515_008, 538_060_032, "float32", 98_400_000, "GGUF Q4_1")
    assert labels == {"disk": "98.4 MB on disk (GGUF Q4_1)",
                      "memory": "538.1 MB in memory (float32, as loaded for pruning)",
                      "value_16bit": "269.0 MB as 16-bit weights"}
    # The What-if page's dense size is the same figure as the 16-bit label.
    assert claims.format_bytes(claims.sizes_from_counts(134_515_008, 1, 1, "unstructured")["dense_bytes"]) + \
        " as 16-bit weights" == labels["value_16bit"]


def test_generation_is_greedy_and_restores_the_weights(tiny):
    masks = _masks(tiny, Structure(2, 4), 0.0)
    before = {n: p.detach().clone() for n, p in tiny.model.named_parameters()}
    rows = claims.compare_generations(tiny, [PROMPT, "def f(x):"], masks, max_new_tokens=NEW_TOKENS)
    assert [r["prompt"] for r in rows] == [PROMPT, "def f(x):"]
    assert all(torch.equal(before[n], p) for n, p in tiny.model.named_parameters())
    again = claims.compare_generations(tiny, [PROMPT], masks, max_new_tokens=NEW_TOKENS)[0]
    assert again == rows[0]  # deterministic
    assert again["pruned"] == claims.generate_text(tiny, PROMPT, NEW_TOKENS, masks=masks)
    assert claims.generate_text(tiny, PROMPT, 0) == ""
    with pytest.raises(ConfigError, match="empty"):
        claims.generate_text(tiny, "   ", NEW_TOKENS)


def test_whatif_and_report_word_and_generate_the_same(tiny, tmp_path):
    """The same setting through the what-if run and the export report: same sizes, same sentences, same text."""
    from pruning_core.analysis.whatif import run_whatif
    from pruning_core.export.pipeline import ExportOptions, run_export
    from pruning_core.outputs.report import summary_sentences

    whatif = run_whatif({"model": "tiny-llama", "protocol": PROTOCOL.to_dict(), **SETTING, "eval_corpora": ["news"],
                         "prompt": PROMPT, "max_new_tokens": NEW_TOKENS}, loaded=tiny)
    export = run_export(tiny, PROTOCOL, ExportOptions(**SETTING, eval_corpora=("news",), prompts=(PROMPT,),
                                                      max_new_tokens=NEW_TOKENS, heatmap=False, formats=("json",)),
                        tmp_path / "export")["report"]
    assert whatif["size"] == export["sizes"]
    assert whatif["speed_note"] == export["speed_note"] == claims.speed_sentence("2:4")
    report_says = summary_sentences(export)
    assert claims.size_sentence(whatif["size"]) in report_says and whatif["speed_note"] in report_says
    assert export["generations"] == [whatif["generations"]]


def test_results_stored_before_the_claims_module_read_in_todays_words(tmp_path):
    """Old what-if "size" and old report "sizes" dicts are recomputed from their counts (no KeyError, same words)."""
    from pruning_core.outputs.report import build_report, summary_sentences

    today = claims.sizes_from_counts(1000, 800, 400, "2:4")
    old_whatif = {"value_bits": 16, "dense_bytes": 2000, "dense_with_zeros_bytes": 2000, "bitmask_bytes": 1300,
                  "nm_2_4_bytes": 1300, "prunable_weights": 800, "kept_weights": 400, "other_parameters": 200}
    old_report = {"dtype": "16-bit values", "parameters": 1000, "pruned_linear_weights": 800, "kept_weights": 400,
                  "dense_bytes": 2000, "sparse_bytes": 1300, "sparse_form": "N:M", "ratio": 1.54, "note": "..."}
    assert claims.sizes_from_record(old_whatif, "2:4") == today == claims.sizes_from_record(old_report, "2:4")
    assert claims.sizes_from_record(today, "2:4") == today
    assert claims.sizes_from_record({"dense_bytes": 2000}, "2:4") is None
    data = {"setting": {"model": "m", "method": "wanda", "structure": "2:4"}, "sizes": old_report}
    assert claims.size_sentence(today) in summary_sentences(data)
    assert "2:4 compressed" in build_report(data, tmp_path, formats=("md",))["md"].read_text()


def test_a_speed_measured_while_other_work_shared_the_cores_says_so():
    from pruning_core.claims import measured_from_speed, speed_sentence
    from pruning_core.structured.speed import others_busy_share

    # 10 s of wall time on this machine's cores, of which other processes took 40 % (this one: 5 CPU seconds).
    cores = __import__("os").cpu_count() or 1
    busy = others_busy_share((100.0, 10.0), (100.0 + 5.0 + 0.4 * 10 * cores, 15.0), 10.0)
    assert busy == pytest.approx(0.4)
    speed = {"machine_text": "a CPU", "others_busy_share": busy,
             "phases": {"float32": {"decode at batch 1": {"dense_tokens_per_s": 10.0, "pruned_tokens_per_s": 12.0}}}}
    said = speed_sentence("structured", measured_from_speed(speed))
    assert "1.20x" in said and "Other processes kept 40% of the cores busy" in said and "approximate" in said
    quiet = speed_sentence("structured", measured_from_speed({**speed, "others_busy_share": 0.02}))
    assert "Other processes" not in quiet

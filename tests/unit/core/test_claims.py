"""The claims module: sizes by hand count, one wording of size and speed for what-if and report, one generation."""

from __future__ import annotations

import struct

import pytest
import torch

from pruning_core import claims
from pruning_core.sizes import records as size_records
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
    for structure, sparsity in ((Structure(2, 4), 0.0), (Structure(), 0.3), (Structure(4, 8), 0.0)):
        masks = _masks(tiny, structure, sparsity)
        kept = sum(int((m.weight.detach() * masks[n]).ne(0).sum())
                   for n, m in tiny.adapter.prunable_modules(tiny.model).items())
        sizes = size_records.sizes_from_masks(tiny, masks, str(structure))
        assert (sizes["parameters"], sizes["prunable_weights"], sizes["kept_weights"]) == (parameters, prunable, kept)
        # No formula sizes of formats no runtime loads; the bytes are those of the files written.
        assert not {"bitmap_bytes", "nm_bytes", "dense_bytes"} & set(sizes)
        dense, pruned = size_records.measured(sizes, "dense"), size_records.measured(sizes, "pruned")
        assert pruned["weight_bytes"] == dense["weight_bytes"] > parameters * 2  # 16-bit values plus the header
    # A prunable module without a mask counts as fully kept.
    masks = _masks(tiny, Structure(), 0.5)
    dropped = next(iter(masks))
    numel = masks.pop(dropped).numel()
    assert size_records.counts_from_masks(tiny, masks, "unstructured")["kept_weights"] == \
        sum(int(m.sum()) for m in masks.values()) + numel


def _record(what: str, weight_bytes: int, **more) -> dict:
    return {"format": "safetensors-16bit", "what": what, "weight_bytes": weight_bytes,
            "total_bytes": weight_bytes + 900, "files": [], **more}


def test_structured_size_and_impossible_counts():
    sizes = size_records.weight_counts(1000, 800, 600, "structured", structured_parameters=800)
    sizes["measured"] = [_record("dense", 2100), _record("structured", 1700)]
    sentence = claims.size_sentence(sizes)
    assert "800 parameters" in sentence and "1.24x smaller" in sentence and "loaded by transformers" in sentence
    with pytest.raises(ConfigError, match="do not fit"):
        size_records.weight_counts(1000, 800, 900, "unstructured")


def test_size_sentence_says_zeros_buy_no_bytes_in_any_structure():
    for structure in ("unstructured", "2:4", "4:8"):
        sizes = size_records.weight_counts(1000, 800, 400, structure)
        sizes["measured"] = [_record("dense", 2100), _record("pruned", 2100)]
        sentence = claims.size_sentence(sizes)
        assert "the same as the dense model" in sentence and "zeros are stored" in sentence
        assert claims.NO_SPARSE_FORMATS in sentence and "compressed form" not in sentence
    # A stored point without its masks: the dense model's measured files, said as such.
    point = size_records.sizes_for_point({"parameters": 1000, "prunable_parameters": 800}, {"sparsity": 0.5},
                                         _record("dense", 2100))
    assert "(measured on the dense model's saved files)" in claims.size_sentence(point)
    assert "2.1 KB" in claims.size_sentence(point)


def test_speed_sentences_by_structure_and_measured():
    assert claims.speed_sentence("unstructured").startswith("No speed-up")
    two_four = claims.speed_sentence("2:4")
    assert "sparse tensor cores" in two_four and "not measured here" in two_four and "CPU" in two_four
    assert "vLLM removed its 2:4 sparse kernels" in two_four
    assert "no common fast kernels" in claims.speed_sentence("4:8")
    measured = {"device": "cpu", "decode at batch 1": {"dense_tokens_per_s": 20.0, "pruned_tokens_per_s": 25.0}}
    sentence = claims.speed_sentence("2:4", measured)
    assert "Measured on cpu" in sentence and "20.0 -> 25.0 tokens/s (1.25x)" in sentence
    assert claims.TWO_FOUR_SERVING in sentence  # measured in PyTorch, said beside what serving runtimes do
    assert claims.TWO_FOUR_SERVING not in claims.speed_sentence("structured", measured)
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
    dense = _record("dense", 269_060_552)
    labels = claims.size_labels(134_515_008, 538_060_032, "float32", 98_400_000, "GGUF Q4_1", dense)
    assert labels == {"disk": "98.4 MB on disk (GGUF Q4_1)",
                      "memory": "538.1 MB in memory (float32, as loaded for pruning)",
                      "value_16bit": "269.1 MB as 16-bit safetensors (loaded by transformers, vLLM), measured on "
                                     "the saved files"}
    # Not measured: no 16-bit figure at all (never parameters x 2 bytes).
    assert claims.size_labels(134_515_008)["value_16bit"] is None


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


def test_results_stored_before_sizes_were_measured_still_render(tmp_path):
    """Old what-if "size" and report "sizes" dicts (formula sizes) read as their counts, with the dense model's
    measurement when the store holds one; their old bitmap / 2:4 figures are never shown, and nothing crashes."""
    from pruning_core.outputs.report import build_report, summary_sentences

    counts = size_records.weight_counts(1000, 800, 400, "2:4")
    old_whatif = {"value_bits": 16, "dense_bytes": 2000, "dense_with_zeros_bytes": 2000, "bitmask_bytes": 1300,
                  "nm_2_4_bytes": 1300, "prunable_weights": 800, "kept_weights": 400, "other_parameters": 200}
    old_report = {"dtype": "16-bit values", "parameters": 1000, "pruned_linear_weights": 800, "kept_weights": 400,
                  "dense_bytes": 2000, "sparse_bytes": 1300, "sparse_form": "N:M", "ratio": 1.54, "note": "..."}
    last_version = {"value_bits": 16, "structure": "2:4", "parameters": 1000, "prunable_weights": 800,
                    "kept_weights": 400, "other_parameters": 200, "dense_bytes": 2000, "bitmap_bytes": 1300,
                    "nm_bytes": 1100, "nm_index_bits": 2, "structured_parameters": None, "structured_bytes": None}
    for old in (old_whatif, old_report, last_version):
        assert size_records.sizes_from_record(old, "2:4") == counts
        said = claims.setting_claims(old, "2:4")["size"]
        assert "not measured" in said and "1.3 KB" not in said and "1.1 KB" not in said
        with_dense = claims.setting_claims(old, "2:4", dense_measured=_record("dense", 2100))["size"]
        assert "2.1 KB" in with_dense and "loaded by transformers, vLLM" in with_dense
    old_structured = {**last_version, "structure": "structured", "structured_parameters": 700,
                      "structured_bytes": 1400, "nm_bytes": None}
    assert "700 parameters" in claims.structured_claims(old_structured, None)["size"]
    assert size_records.sizes_from_record({"dense_bytes": 2000}, "2:4") is None
    data = {"setting": {"model": "m", "method": "wanda", "structure": "2:4"}, "sizes": old_report}
    assert claims.setting_claims(old_report, "2:4")["size"] in summary_sentences(data)
    markdown = build_report(data, tmp_path, formats=("md",))["md"].read_text()
    assert "not measured" in markdown and "compressed" not in markdown.split("No serving runtime")[0]


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

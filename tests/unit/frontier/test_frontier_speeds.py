"""Frontier points carry their speed measured in a runtime, read from the store: the table, the report and
frontier.json show it with the runtime and the machine named, a point without one says "not measured in a
runtime" (never an estimate), GGUF layouts are mapped only where GGUF has the type, and `prunescope frontier
--runtime-speed` measures and links the points it can (where llama-cpp-python is installed)."""

from __future__ import annotations

import json

import pytest

from pruning_core.frontier.build import build_frontier, frontier_points
from pruning_core.frontier.points import FrontierPoint, dense_point, quantized_point, structured_point
from pruning_core.frontier.report import SPEED_HEADER, frontier_report, frontier_rows, frontier_section
from pruning_core.frontier.speeds import (NOT_MEASURED, attach_speeds, gguf_type_of, own_gguf_type, speed_sentence,
                                          stored_speeds)
from pruning_core.gguf import runtime
from pruning_core.gguf.runtime_speed import link_point
from pruning_core.store import Store
from tests.unit.gguf.test_runtime_speed import stored_measurement

DENSE_FILES = {"weight_bytes": 269_060_552, "total_bytes": 269_061_587}


def quantized(method, bits, group, symmetric, size, ppl, start="dense"):
    return quantized_point({"setting": {"method": method, "bits": bits, "group_size": group, "symmetric": symmetric,
                                        "scale_dtype": "float16", "start": start, "actorder": "static"},
                            "bytes": {"compressed-tensors": {"weight_bytes": size, "total_bytes": size}},
                            "ppl": {"wiki": ppl}, "sparsity": 0.0})


def points():
    return [dense_point({"wiki": 17.0}, DENSE_FILES, name="tiny"), quantized("rtn", 4, 32, False, 83_000_000, 17.3),
            quantized("gptq", 4, 64, True, 79_000_000, 17.9),
            structured_point({"ratio": 0.2, "measured_ratio": 0.2, "config": {"units": ["heads", "channels"]},
                              "ppl": {"wiki": 21.0}}, {"weight_bytes": 216_000_000})]


def test_gguf_types_only_where_gguf_has_the_layout():
    dense, q4_1, g64, structured = points()
    assert gguf_type_of(dense) == "F16" and gguf_type_of(q4_1) == "Q4_1"
    assert gguf_type_of(quantized("rtn", 4, 32, True, 1, 1.0)) == "Q4_0"
    assert gguf_type_of(quantized("gptq", 8, 32, True, 1, 1.0)) == "Q8_0"
    assert gguf_type_of(quantized("gptq", 5, 32, False, 1, 1.0)) == "Q5_1"
    for none in (g64, structured, quantized("gptq", 8, None, True, 1, 1.0), quantized("gptq", 3, 32, True, 1, 1.0),
                 quantized("gptq", 4, 32, True, 1, 1.0, start="structured")):
        assert gguf_type_of(none) is None


def test_own_gguf_files_only_for_schemes_gguf_blocks_hold_exactly():
    def setting(bits, group, symmetric, scale="float16", start="dense"):
        return {"method": "gptq", "bits": bits, "group_size": group, "symmetric": symmetric, "scale_dtype": scale,
                "start": start}

    assert own_gguf_type(setting(4, 32, True)) == "Q4_0" and own_gguf_type(setting(4, 32, False)) == "Q4_1"
    assert own_gguf_type(setting(8, 32, True)) == "Q8_0"
    assert own_gguf_type(setting(4, 32, True, start="structured")) == "Q4_0"  # the start does not matter
    for none in (setting(8, 32, False), setting(5, 32, True), setting(4, 64, True), setting(4, None, True),
                 setting(4, 32, True, scale="bfloat16")):
        assert own_gguf_type(none) is None


def test_a_measured_gguf_file_is_a_format_of_the_point_and_the_smaller_one_sizes_it():
    record = {"setting": {"method": "gptq", "bits": 4, "group_size": 32, "symmetric": True, "scale_dtype": "float16",
                          "start": "dense", "actorder": "static"},
              "bytes": {"compressed-tensors": {"weight_bytes": 90, "total_bytes": 95},
                        "safetensors-16bit": {"weight_bytes": 300, "total_bytes": 301},
                        "gguf": {"weight_bytes": 80, "total_bytes": 80, "type": "Q4_0", "exact": True,
                                 "re_rounded": False, "label": "GGUF"}},
              "ppl": {"wiki": 17.5}, "sparsity": 0.0}
    point = quantized_point(record)
    assert set(point.sizes) == {"compressed-tensors", "gguf"}  # the 16-bit copy is the dense model, not this point
    assert point.format == "gguf" and point.bytes == 80 and point.runtimes == ("llama.cpp",)
    assert point.format_words() == "GGUF Q4_0 (loaded by llama.cpp)"
    record["bytes"]["gguf"]["weight_bytes"] = 100
    assert quantized_point(record).format == "compressed-tensors"  # both listed, the smaller one sizes the point
    # A re-rounded file holds other weights than the ones evaluated: not a format of this point.
    record["bytes"]["gguf"].update(weight_bytes=10, exact=False, re_rounded="the dequantized weights re-rounded")
    assert set(quantized_point(record).sizes) == {"compressed-tensors"}


def test_stored_speeds_reach_the_table_the_report_and_frontier_json(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    dense, q4_1, g64, _ = points()
    link_point(store, "fp", dense.key, stored_measurement(store, "k16", "Test CPU", 100.0), "the dense model as F16")
    link_point(store, "fp", q4_1.key, stored_measurement(store, "kq4", "Test CPU", 250.0), "the dense model as Q4_1")
    frontier = build_frontier(attach_speeds(points(), stored_speeds(store, "fp")), ["wiki"], max_increase=0.03)
    rows = {r["key"]: r for r in frontier["points"]}
    assert rows[q4_1.key]["speed"]["decode_tokens_per_s"] == 250.0 and rows[q4_1.key]["speed"]["runtime"] == "llama.cpp"
    assert json.loads(json.dumps(frontier))["points"][0].get("speed", "absent") != "absent"  # frontier.json has it
    assert frontier_points(frontier)[0].speed == frontier["points"][0]["speed"]  # read back by a later frontier
    cells = {r[0]: r[-1] for r in frontier_rows(frontier)}
    assert cells[rows[q4_1.key]["technique"]] == "1,000 / 250 tokens/s (the dense model in this GGUF type)"
    assert cells[rows[dense.key]["technique"]] == "400 / 100 tokens/s"
    assert cells[rows[g64.key]["technique"]] == NOT_MEASURED
    section = frontier_section(frontier)
    table = next(b for b in section.blocks if hasattr(b, "headers"))
    assert table.headers[-1] == SPEED_HEADER
    words = " ".join(getattr(b, "text", "") for b in section.blocks)
    assert "llama.cpp (llama-cpp-python 0.3.36) on Test CPU (2 cores, 2 threads; avx2)" in words
    # The answer (RTN 4-bit groups of 32, the smallest within +3 %) says its speed against the dense model's.
    assert frontier["answer"]["key"] == q4_1.key
    assert ("decode 250 tokens/s at batch 1, prefill 1,000 tokens/s (2.50x the dense model's decode, 2.50x its "
            "prefill)") in words
    assert "the file timed: the dense model as Q4_1" in words  # which file was timed, beside its figures
    summary = frontier_report({"model": {"name": "tiny"}, "frontier": frontier, "protocol": {}})
    assert "Test CPU" in json.dumps(summary, default=str)


def test_without_a_measurement_every_point_says_not_measured(tmp_path):
    frontier = build_frontier(attach_speeds(points(), stored_speeds(Store(tmp_path / "s.sqlite"), "fp")), ["wiki"])
    assert all(r["speed"] is None for r in frontier["points"])
    assert {r[-1] for r in frontier_rows(frontier)} == {NOT_MEASURED}
    words = " ".join(getattr(b, "text", "") for b in frontier_section(frontier).blocks)
    assert f"Speed: {NOT_MEASURED}." in words and "tokens/s" not in words.replace("--runtime-speed", "")
    assert speed_sentence(None) == f"Speed: {NOT_MEASURED}."


def test_a_dense_speed_from_another_machine_gives_no_ratio(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    dense, q4_1, *_ = points()
    link_point(store, "fp", dense.key, stored_measurement(store, "k16", "Other CPU", 100.0), "F16")
    link_point(store, "fp", q4_1.key, stored_measurement(store, "kq4", "Test CPU", 250.0), "Q4_1")
    speeds = stored_speeds(store, "fp")
    said = speed_sentence({"speed": speeds[q4_1.key]}, {"speed": speeds[dense.key]})
    assert "Test CPU" in said and "x the dense" not in said


@pytest.mark.skipif(not runtime.llama_cpp_available(),
                    reason="llama-cpp-python is not installed (pip install '.[llama]' compiles llama.cpp).")
def test_frontier_runtime_speed_measures_the_gguf_layouts_and_links_them(tmp_path, monkeypatch, capsys):
    from pruning_core.cli import main

    monkeypatch.setenv("PRUNESCOPE_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    # Structured 27.5 % leaves tiny-llama 2 heads (o_proj 32 wide) and 96 MLP channels: widths groups of 32 divide,
    # so the structured model quantizes to Q4_0 blocks.
    args = ["frontier", "--model", "tiny-llama", "--calib", "wiki", "--nsamples", "2", "--seqlen", "32",
            "--eval-windows", "2", "--batch-size", "2", "--techniques",
            "rtn:4:32:asym,rtn:4:64,structured:0.275,structured:0.275+rtn:4:32", "--runtime-speed", "--report",
            "--out", str(out)]
    assert main(args) == 0
    frontier = json.loads((out / "frontier.json").read_text())["frontier"]
    measured = {r["family"] + " " + r["technique"]: r["speed"] for r in frontier["points"] if r["speed"]}
    # The dense F16 file, the Q4_1 point's and the structured + Q4_0 point's own GGUF files and the structured model
    # as F16; groups of 64 have no GGUF type and stay not measured.
    assert sorted(t.split(" ")[0] for t in measured) == ["dense", "quantized", "structured", "structured"]
    assert any("groups of 32, asymmetric" in t for t in measured) and not any("64" in t for t in measured)
    assert all(s["runtime"] == "llama.cpp" and s["decode_tokens_per_s"] > 0 and s["machine"] for s in measured.values())
    assert all(s["own_file"] for s in measured.values())  # every file timed is the point's own model
    q4_1 = next(r for r in frontier["points"] if "groups of 32, asymmetric" in r["technique"])
    assert "this point's own GGUF file (Q4_1" in q4_1["speed"]["measured_on"]
    # Its exact GGUF file is measured and listed as a format beside compressed-tensors.
    assert set(q4_1["sizes"]) == {"compressed-tensors", "gguf"} and q4_1["sizes"]["gguf"]["type"] == "Q4_1"
    assert q4_1["speed"]["file_bytes"] >= q4_1["sizes"]["gguf"]["weight_bytes"]
    combo = next(r for r in frontier["points"] if r["family"] == "structured + quantized")
    assert "own GGUF file (Q4_0" in combo["speed"]["measured_on"] and combo["sizes"]["gguf"]["type"] == "Q4_0"
    printed = capsys.readouterr().out
    assert NOT_MEASURED in printed and "Speed measured in llama.cpp" in printed
    assert "not measured in a runtime" in (out / "report.md").read_text()
    # The links are in the store: a frontier built later from stored results shows the same speeds.
    store = Store(tmp_path / "home" / "prunescope.sqlite")
    assert len(store.results_of_kind("runtime_speed_point")) == 4
    # A second run reads the points and their own files' measurements back: nothing is quantized or timed again.
    assert main(args) == 0
    again = json.loads((out / "frontier.json").read_text())
    assert {r["key"]: r["speed"]["key"] for r in again["frontier"]["points"] if r["speed"]} == {
        r["key"]: r["speed"]["key"] for r in frontier["points"] if r["speed"]}
    assert all(m.get("from_store", True) for m in again["measured"] if "rtn" in m["technique"])


def test_frontier_spec_keys_do_not_change_without_the_option():
    from pruning_core.frontier.run import FrontierSpec

    assert "runtime_speed" not in FrontierSpec().to_dict()
    assert FrontierSpec(runtime_speed=True).to_dict()["runtime_speed"] is True
    assert FrontierSpec.from_dict(FrontierSpec(runtime_speed=True).to_dict()).runtime_speed
    assert FrontierPoint.from_dict({**points()[0].to_dict(), "speed": {"x": 1}}).speed == {"x": 1}


@pytest.mark.skipif(not runtime.llama_cpp_available(),
                    reason="llama-cpp-python is not installed (pip install '.[llama]' compiles llama.cpp).")
def test_a_family_llama_cpp_does_not_run_is_measured_without_a_speed_saying_why(tmp_path, monkeypatch):
    from pruning_core.cli import main

    monkeypatch.setenv("PRUNESCOPE_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    assert main(["frontier", "--model", "tiny-opt", "--calib", "wiki", "--nsamples", "2", "--seqlen", "32",
                 "--eval-windows", "2", "--batch-size", "2", "--techniques", "rtn:4:32", "--runtime-speed",
                 "--out", str(out)]) == 0
    result = json.loads((out / "frontier.json").read_text())
    assert all(r["speed"] is None for r in result["frontier"]["points"])
    skipped = [m["skipped"] for m in result["measured"] if m.get("skipped")]
    assert skipped and all("'opt' is not a model family llama.cpp runs" in s for s in skipped)

"""Structured runs on tiny models: the speed measurement (shape of the result, store reuse, models untouched; no
timing assertions), run_structured through the one evaluation path (stored points, saved folders that reload
to the same perplexity), the claims it states, the CLI and the job kind."""

from __future__ import annotations

import json

import pytest
import torch

from pruning_core import claims, evaluate
from pruning_core.cli import EXIT_BAD_INPUT, main
from pruning_core.errors import ConfigError
from pruning_core.jobs.runner import JOB_KINDS, JobRunner
from pruning_core.store import Store
from pruning_core.models import load_model
from pruning_core.models.tiny import tiny_model
from pruning_core.protocol import Protocol
from pruning_core.structured import StructuredConfig, prune_structured
from pruning_core.sizes import records as size_records
from pruning_core.structured.run import POINT_KIND, StructuredSpec, run_structured
from pruning_core.structured.speed import SpeedConfig, machine_facts, measure_speed

QUICK_SPEED = {"prefill_tokens": 16, "decode_tokens": 3, "decode_batches": [1, 2], "repeats": 1,
               "prompt_tokens": 4}
PROTOCOL = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=2, batch_size=4)


def state(model):
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_speed_measures_both_models_in_each_phase_and_dtype_without_changing_them(family, tmp_path):
    dense = tiny_model(family, layers=2)
    pruned = prune_structured(dense, None, StructuredConfig(score="magnitude", compensate=False, ratio=0.3)).loaded
    before = state(dense.model), state(pruned.model)
    store = Store(tmp_path / "s.sqlite")
    config = SpeedConfig(**QUICK_SPEED)
    speed = measure_speed(dense, pruned, config, store=store)
    assert set(speed["phases"]) == {"float32", "bfloat16"}
    labels = ["prefill at 16 tokens", "decode at batch 1", "decode at batch 2"]
    for dtype, table in speed["phases"].items():
        assert list(table) == labels
        for row in table.values():
            assert row["dense_tokens_per_s"] > 0 and row["pruned_tokens_per_s"] > 0
            assert row["speedup"] == pytest.approx(row["pruned_tokens_per_s"] / row["dense_tokens_per_s"])
            assert len(row["dense_seconds"]) == len(row["pruned_seconds"]) == config.repeats
        assert speed["ratios"][dtype] == {label: row["speedup"] for label, row in table.items()}
    # The cached fp32 models were neither cast nor changed (bf16 ran on copies).
    for original, model in zip(before, (dense.model, pruned.model)):
        now = state(model)
        assert all(torch.equal(original[k], now[k]) and now[k].dtype == original[k].dtype for k in original)
    assert speed["machine"] == machine_facts() and speed["cached"] is False
    again = measure_speed(dense, pruned, config, store=store)
    assert again["cached"] is True and again["phases"] == speed["phases"]
    # Another machine fact (the thread count) is another measurement.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert measure_speed(dense, pruned, config, store=store)["cached"] is False
    finally:
        torch.set_num_threads(threads)


def test_speed_refuses_bad_settings_and_too_long_runs():
    dense = tiny_model("llama", layers=1)
    with pytest.raises(ConfigError, match="dtypes"):
        measure_speed(dense, dense, SpeedConfig(dtypes=("float16",)))
    with pytest.raises(ConfigError, match="positions"):
        measure_speed(dense, dense, SpeedConfig(prefill_tokens=4096))
    with pytest.raises(ConfigError, match="Prefill logits"):
        measure_speed(dense, dense, SpeedConfig(prefill_logits="first"))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_prefill_asks_for_the_last_position_s_logits_only_where_the_model_allows_it(family):
    from pruning_core.structured.speed import _last_logits_only

    model = tiny_model(family, layers=1).model
    extra = _last_logits_only(model)
    ids = torch.randint(0, 50, (1, 12))
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits
        last = model(input_ids=ids, use_cache=False, **extra).logits
    # generation's prefill needs only the next token's logits: the same numbers, one position (or all of them
    # for a model without the argument, which is timed as it is)
    assert torch.allclose(last[:, -1], full[:, -1], atol=1e-5)
    assert last.shape[1] == (1 if extra else 12)


def test_measured_structured_speed_is_phrased_from_the_measurement_and_unstructured_stays_honest():
    speed = {"machine_text": "Test CPU (2 threads), torch 2", "phases": {"float32": {
        "prefill at 512 tokens": {"dense_tokens_per_s": 100.0, "pruned_tokens_per_s": 125.0},
        "decode at batch 1": {"dense_tokens_per_s": 20.0, "pruned_tokens_per_s": 24.0}}}}
    sentence = claims.structured_claims(None, speed)["speed"]
    assert "Test CPU" in sentence and "(1.25x)" in sentence and "decode at batch 1 20.0 -> 24.0" in sentence
    assert "not measured" in claims.structured_claims(None, None)["speed"]
    assert claims.measured_from_speed(speed, "bfloat16") is None
    assert claims.speed_sentence("unstructured").startswith("No speed-up")


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


def test_run_structured_evaluates_the_copy_stores_points_and_saves_a_folder_that_reloads(tiny, tmp_path):
    store = Store(tmp_path / "s.sqlite")
    spec = StructuredSpec(model="tiny-llama", protocol=PROTOCOL, ratios=(0.2, 0.4), speed=True,
                          speed_settings={**QUICK_SPEED, "dtypes": ["float32"]}, max_new_tokens=3)
    before = state(tiny.model)
    result = run_structured(spec, loaded=tiny, store=store, save_dir=tmp_path / "models")
    assert all(torch.equal(before[k], v) for k, v in state(tiny.model).items())
    dense = evaluate.evaluate_setting(tiny, PROTOCOL, ["news"], None)
    assert result["dense_ppl"]["news"] == pytest.approx(dense.dense_ppl["news"])
    first, second = result["points"]
    assert first["parameters"]["model_after"] > second["parameters"]["model_after"]
    assert first["measured_ratio"] == pytest.approx(0.2, abs=0.05)
    for point in result["points"]:
        assert point["saved"]["max_relative_gap"] < 1e-4
        assert point["saved"]["reloaded_ppl"]["news"] == pytest.approx(point["ppl"]["news"], rel=1e-4)
        folder = tmp_path / "models" / f"structured-{point['ratio']:g}"
        assert point["saved"]["file_bytes"] == sum(f.stat().st_size for f in folder.glob("*.safetensors")) > 0
        assert point["sizes"]["structured_parameters"] == point["parameters"]["model_after"]
        small, full = (size_records.measured(point["sizes"], w)["weight_bytes"] for w in ("structured", "dense"))
        assert small < full and claims.format_bytes(small) in point["claims"]["size"]
        assert "Measured on" in point["claims"]["speed"] and point["speed"]["phases"]["float32"]
        assert point["samples"][0]["pruned"] is not None
    json.dumps(result)
    again = run_structured(spec, loaded=tiny, store=store)
    assert [p["from_store"] for p in again["points"]] == [True, True]
    assert [p["ppl"] for p in again["points"]] == [p["ppl"] for p in result["points"]]
    threads = torch.get_num_threads()
    try:  # another machine fact: the stored points' speeds are not this machine's, so they are timed again
        torch.set_num_threads(threads + 1)
        retimed = run_structured(spec, loaded=tiny, store=store)
        assert [p["from_store"] for p in retimed["points"]] == [False, False]
        assert retimed["points"][0]["speed"]["machine"]["threads"] == threads + 1
    finally:
        torch.set_num_threads(threads)
    # A point stored before sizes were measured on files (formula sizes) is pruned again, and its files measured.
    for row in store.execute("SELECT key, payload FROM results WHERE kind = ?", (POINT_KIND,)):
        payload = json.loads(row["payload"])
        payload["sizes"] = {**{k: v for k, v in payload["sizes"].items() if k not in ("sizes_version", "measured")},
                            "value_bits": 16, "dense_bytes": 2, "structured_bytes": 1}
        store.put_result(row["key"], POINT_KIND, payload)
    upgraded = run_structured(spec, loaded=tiny, store=store)
    assert [p["from_store"] for p in upgraded["points"]] == [False, False]
    assert all(p["sizes"]["sizes_version"] == size_records.SIZES_VERSION for p in upgraded["points"])


def test_spec_refuses_bad_input_before_work():
    with pytest.raises(ConfigError, match="ratio"):
        StructuredSpec(ratios=(1.5,)).validate()
    with pytest.raises(ConfigError, match="units"):
        StructuredSpec(units=("rows",)).validate()
    with pytest.raises(ConfigError, match="speed settings"):
        StructuredSpec(speed=True, speed_settings={"warmups": 3}).validate()
    with pytest.raises(ConfigError, match="Unknown structured settings"):
        StructuredSpec.from_dict({"ratio": 0.2})


CLI_ARGS = ["--model", "tiny-llama", "--calib", "news", "--eval", "news", "--nsamples", "4", "--seqlen", "32",
            "--eval-windows", "2", "--batch-size", "4", "--no-store"]


def test_cli_writes_structured_json_and_refuses_bad_units(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["structured", *CLI_ARGS, "--ratios", "0.25", "--units", "channels", "--no-compensate",
                 "--score", "magnitude", "--out", str(out)]) == 0
    document = json.loads((out / "structured.json").read_text())
    (point,) = document["points"]
    assert point["claims"]["size"] in capsys.readouterr().out  # the measured files, worded as the report says
    assert "16-bit safetensors (loaded by" in point["claims"]["size"]
    assert point["config"]["units"] == ["channels"] and point["config"]["compensate"] is False
    assert point["speed"] is None and "not measured" in point["claims"]["speed"]
    assert all(w["channels"] < tiny_model("llama").model.config.intermediate_size for w in point["widths"])
    assert main(["structured", *CLI_ARGS, "--units", "rows", "--out", str(tmp_path / "bad")]) == EXIT_BAD_INPUT
    assert "rows" in capsys.readouterr().err


def test_structured_job_kind_runs_inline_with_progress(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESCOPE_HOME", str(tmp_path / "home"))
    assert "structured" in JOB_KINDS
    runner = JobRunner()
    seen = []
    spec = StructuredSpec(model="tiny-llama", protocol=PROTOCOL, ratios=(0.3,), score="magnitude",
                          compensate=False, max_new_tokens=0).to_dict()
    result = runner.run_inline("structured", spec, lambda f, m: seen.append(f))
    assert seen[-1] == 1.0 and len(result["points"]) == 1
    assert runner.list_jobs()[0]["state"] == "done"


# ------------------------------------------------------------------------------------------ allocation

# Tiny llama: a decoder layer has 36,992 parameters and an MLP channel costs 3 x 64 = 192 of them. Heads go first
# (in steps of 2 query heads = 4,096 parameters), the channels take the remainder to the nearest channel, so each
# layer lands within half a channel (96 / 36,992 = 0.26 %) of its planned fraction, and so does their mean.
HALF_CHANNEL = 96 / 36992


def test_owl_spreads_the_ratio_over_layers_and_keeps_the_global_ratio_within_half_a_channel(tiny, tmp_path):
    from pruning_core.structured.units import layer_parameters

    store = Store(tmp_path / "s.sqlite")
    spec = StructuredSpec(model="tiny-llama", protocol=PROTOCOL, ratios=(0.2, 0.4), score="magnitude",
                          compensate=False, max_new_tokens=0, allocation="OWL")
    result = run_structured(spec, loaded=tiny, store=store)
    assert result["spec"]["allocation"] == "owl"
    sizes = [layer_parameters(layer) for layer in tiny.adapter.decoder_layers(tiny.model)]
    for point in result["points"]:
        plan = point["config"]["plan"]
        assert point["allocation"] == "owl" and plan["allocator"] == "owl" and plan["target"] == point["ratio"]
        planned = [row[0] for row in plan["values"]]  # OWL gives every module of a layer the layer's value
        removed = point["layer_removed"]
        assert max(removed) - min(removed) > 0.1  # not uniform: the layers lose different shares
        assert removed == pytest.approx(planned, abs=HALF_CHANNEL)
        weighted = sum(r * n for r, n in zip(removed, sizes)) / sum(sizes)
        assert weighted == pytest.approx(point["measured_ratio"], abs=1e-12)
        assert point["measured_ratio"] == pytest.approx(point["ratio"], abs=HALF_CHANNEL)
        assert len({w["channels"] for w in point["widths"]}) == 2
    # Another allocation is another point; the same one is found in the store.
    again = run_structured(spec, loaded=tiny, store=store)
    assert [p["from_store"] for p in again["points"]] == [True, True]
    uniform = run_structured(StructuredSpec(**{**spec.to_dict(), "protocol": PROTOCOL, "allocation": "uniform"}),
                             loaded=tiny, store=store)
    assert [p["from_store"] for p in uniform["points"]] == [False, False]
    assert all(len(set(p["layer_removed"])) == 1 and p["config"]["plan"] is None for p in uniform["points"])


def test_uniform_allocation_is_bit_identical_to_no_allocation(tiny, tmp_path):
    from pruning_core.allocation.allocators import AllocationInputs, make_plan

    store = Store(tmp_path / "s.sqlite")
    old = StructuredSpec(model="tiny-llama", protocol=PROTOCOL, ratios=(0.3,), max_new_tokens=0).to_dict()
    for name in ("allocation", "sensitivity", "sensitivity_method"):
        old.pop(name)  # a spec written before allocations existed
    first = run_structured(old, loaded=tiny, store=store)
    explicit = StructuredSpec(model="tiny-llama", protocol=PROTOCOL, ratios=(0.3,), max_new_tokens=0,
                              allocation="uniform")
    second = run_structured(explicit, loaded=tiny, store=store)
    assert second["points"][0]["from_store"] and second["points"][0]["ppl"] == first["points"][0]["ppl"]
    # The uniform allocator's plan prunes exactly the same model as a plain ratio.
    config = explicit.config(0.3)
    plain = prune_structured(tiny, None, StructuredConfig(score="magnitude", compensate=False, ratio=0.3))
    planned = prune_structured(tiny, None, StructuredConfig(score="magnitude", compensate=False, ratio=0.3,
                                                            plan=make_plan("uniform", AllocationInputs(tiny), 0.3)))
    assert config.plan is None and plain.widths == planned.widths
    a, b = state(plain.loaded.model), state(planned.loaded.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_allocation_refuses_unknown_names_layers_and_a_missing_sensitivity_map(tiny, tmp_path):
    with pytest.raises(ConfigError, match="Unknown allocation 'outliers'.*uniform, owl, sensitivity"):
        StructuredSpec(allocation="outliers").validate()
    with pytest.raises(ConfigError, match="block influence"):
        StructuredSpec(units=("layers",), allocation="owl").validate()
    spec = StructuredSpec(model="tiny-llama", protocol=PROTOCOL, ratios=(0.2,), allocation="sensitivity",
                          max_new_tokens=0)
    with pytest.raises(ConfigError, match="Sensitivity page.*prunescope sensitivity --method wanda"):
        run_structured(spec, loaded=tiny, store=Store(tmp_path / "s.sqlite"))


def test_cli_takes_an_allocation(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["structured", *CLI_ARGS, "--ratios", "0.3", "--score", "magnitude", "--no-compensate",
                 "--allocation", "owl", "--out", str(out)]) == 0
    (point,) = json.loads((out / "structured.json").read_text())["points"]
    assert point["allocation"] == "owl" and point["config"]["plan"]["allocator"] == "owl"
    assert len(set(point["layer_removed"])) == 2
    assert main(["structured", *CLI_ARGS, "--allocation", "outliers", "--out", str(tmp_path / "bad")]) \
        == EXIT_BAD_INPUT
    assert "outliers" in capsys.readouterr().err


def test_sensitivity_allocation_reads_a_sensitivity_file_and_spares_the_sensitive_layer(tiny, tmp_path):
    kinds = list(tiny.adapter.module_kinds)
    maps = [{"layers": [0, 1], "modules": kinds, "metric": "exact", "method": "wanda", "sparsity": s,
             # layer 0 costs ten times more loss than layer 1 at every sparsity
             "values": [[10.0 * s * s] * len(kinds), [s * s] * len(kinds)]} for s in (0.3, 0.6)]
    file = tmp_path / "sensitivity_all.json"
    file.write_text(json.dumps({"maps": maps}))
    spec = StructuredSpec(model="tiny-llama", protocol=PROTOCOL, ratios=(0.3,), units=("channels",),
                          score="magnitude", compensate=False, max_new_tokens=0, allocation="sensitivity",
                          sensitivity=str(file))
    (point,) = run_structured(spec, loaded=tiny)["points"]
    assert point["config"]["plan"]["allocator"] == "sensitivity"
    first, second = point["layer_removed"]
    assert first < 0.3 < second
    assert point["measured_ratio"] == pytest.approx(0.3, abs=HALF_CHANNEL)

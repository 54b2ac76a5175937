"""Speed measured in llama.cpp: a tiny model's GGUF file is timed with an injected clock (tokens counted from
llama.cpp itself, tokens/s exactly tokens / the clock's seconds, no timed assertion), the measurement is stored under
the file's hash + runtime + CPU + threads and read back, links from frontier points round-trip through the store,
and without llama-cpp-python the measurement is refused in one sentence."""

from __future__ import annotations

import itertools

import pytest

from pruning_core.errors import ConfigError
from pruning_core.gguf import runtime
from pruning_core.gguf.runtime_speed import (
    LINK_KIND, SPEED_KIND, RuntimeSpeedConfig, link_point, measure_runtime_speed, point_speeds, speed_fields)
from pruning_core.store import Store

needs_llama_cpp = pytest.mark.skipif(not runtime.llama_cpp_available(),
                                     reason="llama-cpp-python is not installed (pip install '.[llama]' compiles "
                                            "llama.cpp).")
CONFIG = RuntimeSpeedConfig(prefill_tokens=40, decode_tokens=6, repeats=3, warmup=1, threads=1)


def stepping_clock(step: float):
    """A clock that moves `step` seconds each time it is read: every timed phase lasts exactly `step`."""
    ticks = itertools.count()
    return lambda: next(ticks) * step


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    from pruning_core.gguf.write import export_gguf
    from pruning_core.models.tiny import tiny_model

    path = tmp_path_factory.mktemp("speed") / "tiny-F16.gguf"
    export_gguf(tiny_model("llama", layers=2), path, "F16")
    return path


@needs_llama_cpp
def test_the_speed_counts_llama_cpps_tokens_over_the_clocks_seconds(tiny_file, tmp_path):
    store = Store(tmp_path / "s.sqlite")
    result = measure_runtime_speed(tiny_file, CONFIG, store=store, clock=stepping_clock(0.25))
    assert not result["from_store"]
    # One warm-up is not kept; each kept round evaluated exactly the tokens asked, as llama.cpp counted them.
    assert len(result["rounds"]["prefill"]) == len(result["rounds"]["decode"]) == 3
    assert all(r == {"tokens": 40, "seconds": 0.25} for r in result["rounds"]["prefill"])
    assert all(r == {"tokens": 6, "seconds": 0.25} for r in result["rounds"]["decode"])
    assert result["prefill_tokens_per_s"] == 40 / 0.25 and result["decode_tokens_per_s"] == 6 / 0.25
    assert result["settings"]["threads"] == 1 and result["settings"]["n_ctx"] == 40
    assert result["runtime"] == "llama.cpp" and result["runtime_version"]
    assert result["machine"]["cpu"] and result["machine"]["threads"] == 1
    assert result["file"]["bytes"] == tiny_file.stat().st_size and len(result["file"]["sha256"]) == 64
    assert len(result["load"]["before"]) == 3 and len(result["load"]["after"]) == 3
    # Stored: the same file, runtime, CPU and threads is a lookup (the clock is never read again) ...
    again = measure_runtime_speed(tiny_file, CONFIG, store=store, clock=lambda: pytest.fail("measured again"))
    assert again["from_store"] and again["decode_tokens_per_s"] == result["decode_tokens_per_s"]
    assert [r["key"] for r in store.results_of_kind(SPEED_KIND)] == [result["key"]]
    # ... and other threads are another measurement.
    other = measure_runtime_speed(tiny_file, RuntimeSpeedConfig(**{**CONFIG.__dict__, "threads": 2}), store=store,
                                  clock=stepping_clock(0.5))
    assert not other["from_store"] and other["key"] != result["key"] and other["decode_tokens_per_s"] == 6 / 0.5


@needs_llama_cpp
def test_a_changed_file_is_measured_again(tiny_file, tmp_path):
    from pruning_core.gguf.write import export_gguf
    from pruning_core.models.tiny import tiny_model

    store = Store(tmp_path / "s.sqlite")
    first = measure_runtime_speed(tiny_file, CONFIG, store=store, clock=stepping_clock(1.0))
    other_file = tmp_path / "tiny-Q8_0.gguf"
    export_gguf(tiny_model("llama", layers=2), other_file, "Q8_0")
    second = measure_runtime_speed(other_file, CONFIG, store=store, clock=stepping_clock(1.0))
    assert not second["from_store"] and second["file"]["sha256"] != first["file"]["sha256"]


def test_without_llama_cpp_the_measurement_is_refused_in_one_sentence(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "llama_cpp_available", lambda: False)
    with pytest.raises(ConfigError, match="llama-cpp-python is not installed") as caught:
        measure_runtime_speed(tmp_path / "any.gguf", CONFIG)
    assert str(caught.value).count(". ") == 0 and "pip install '.[llama]'" in str(caught.value)


def stored_measurement(store, key: str, cpu: str, decode: float, threads: int = 2) -> dict:
    """A measurement as `measure_runtime_speed` stores it (put directly: what the views read)."""
    record = {"runtime": "llama.cpp", "runtime_version": "0.3.36", "machine": {"cpu": cpu, "threads": threads,
              "cpu_flags": ["avx2"], "cpu_count": 2}, "machine_words": f"{cpu} (2 cores, {threads} threads; avx2)",
              "settings": {"prefill_tokens": 512, "decode_tokens": 64, "threads": threads},
              "file": {"bytes": 1000}, "prefill_tokens_per_s": 4 * decode, "decode_tokens_per_s": decode,
              "load": {"before": [0.1, 0.1, 0.1]}, "key": key}
    store.put_result(key, SPEED_KIND, record)
    return record


def test_links_from_points_round_trip_newest_first_and_per_model(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    old = stored_measurement(store, "k-old", "Some CPU", 50.0)
    new = stored_measurement(store, "k-new", "Some CPU", 80.0)
    link_point(store, "fp-a", "dense:tiny", old, "the dense model written as F16")
    link_point(store, "fp-a", "quantized:q4", new, "the dense model written as GGUF Q4_0")
    link_point(store, "fp-b", "dense:tiny", new, "another model")
    found = point_speeds(store, "fp-a")
    assert set(found) == {"dense:tiny", "quantized:q4"}
    assert found["dense:tiny"]["decode_tokens_per_s"] == 50.0
    assert found["dense:tiny"]["runtime_words"] == "llama.cpp (llama-cpp-python 0.3.36)"
    assert found["dense:tiny"]["machine_words"].startswith("Some CPU")
    assert found["quantized:q4"]["measured_on"] == "the dense model written as GGUF Q4_0"
    assert found["quantized:q4"]["own_file"] is False  # a stand-in of its layout, not the point's own file
    # The point's own file measured later replaces the stand-in, and says so.
    link_point(store, "fp-a", "quantized:q4", new, "this point's own GGUF file (Q4_0)", own_file=True)
    assert point_speeds(store, "fp-a")["quantized:q4"]["own_file"] is True
    # A newer link of the same point on the same machine replaces the older one.
    link_point(store, "fp-a", "dense:tiny", new, "the dense model written as F16")
    assert point_speeds(store, "fp-a")["dense:tiny"]["decode_tokens_per_s"] == 80.0
    assert len(store.results_of_kind(LINK_KIND)) == 3  # one link a point, model and machine
    assert point_speeds(store, None) == {} and point_speeds(None, "fp-a") == {}
    assert speed_fields(new)["prefill_tokens"] == 512

"""Estimates of time and memory: well-formed, monotone in the work asked for, close to a measured tiny run."""

from __future__ import annotations

import pytest

from pruning_core.analysis.estimates import (
    estimate_sensitivity,
    estimate_sweep,
    measure_throughput,
)
from pruning_core.models import load_model
from pruning_core.protocol import Protocol
from pruning_core.execution.store import Store
from pruning_core.analysis.sweep import SweepSpec

PROTOCOL = Protocol(calib="news", nsamples=8, seqlen=64, eval_windows=4, batch_size=4)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


def _check(estimate: dict) -> None:
    assert set(estimate) == {"seconds", "peak_memory_bytes", "breakdown", "assumptions"}
    assert estimate["seconds"] > 0 and estimate["peak_memory_bytes"] > 0
    assert estimate["seconds"] == pytest.approx(sum(estimate["breakdown"].values()))
    assert isinstance(estimate["assumptions"], str) and estimate["assumptions"]


def test_sweep_estimate_grows_with_points_and_pruned_propagation(tiny):
    info = tiny.describe()
    small = estimate_sweep(info, SweepSpec(model="tiny-llama", methods=("wanda",), sparsities=(0.5,),
                                           eval_corpora=("news",), protocol=PROTOCOL), 5000.0)
    big = estimate_sweep(info, SweepSpec(model="tiny-llama", methods=("wanda", "sparsegpt"), sparsities=(0.3, 0.5, 0.7),
                                         eval_corpora=("news",), protocol=PROTOCOL), 5000.0)
    dense = estimate_sweep(info, SweepSpec(model="tiny-llama", methods=("wanda", "sparsegpt"), sparsities=(0.3, 0.5, 0.7),
                                           eval_corpora=("news",), propagation="dense", protocol=PROTOCOL), 5000.0)
    for e in (small, big, dense):
        _check(e)
    assert big["seconds"] > small["seconds"] and big["seconds"] > dense["seconds"]
    assert big["peak_memory_bytes"] >= info["memory_bytes"]
    assert "5000 tokens/s" in big["assumptions"]
    assert "assumed" in estimate_sweep(info, SweepSpec(protocol=PROTOCOL, eval_corpora=("news",)))["assumptions"]


def test_sensitivity_estimate_scales_with_sparsities_and_metrics(tiny):
    info = tiny.describe()
    one = estimate_sensitivity(info, PROTOCOL, "wanda", [0.5], ["exact"], 4, 5000.0)
    three = estimate_sensitivity(info, PROTOCOL, "wanda", [0.3, 0.5, 0.7], ["exact"], 4, 5000.0)
    proxies = estimate_sensitivity(info, PROTOCOL, "wanda", [0.5], ["reconstruction", "taylor"], 4, 5000.0)
    for e in (one, three, proxies):
        _check(e)
    assert three["breakdown"]["exact_probes"] == pytest.approx(3 * one["breakdown"]["exact_probes"])
    assert proxies["breakdown"]["exact_probes"] == 0 and proxies["breakdown"]["taylor"] > 0


def test_throughput_is_measured_and_cached(tiny, tmp_path):
    store = Store(tmp_path / "s.sqlite")
    rate = measure_throughput(tiny, 64, "float32", store)
    assert rate > 0
    assert measure_throughput(tiny, 64, "float32", store) == rate  # from the store (a new timing would differ)
    assert measure_throughput(tiny, 64, "float32", Store(tmp_path / "other.sqlite")) > 0

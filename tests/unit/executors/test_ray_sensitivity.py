"""Exact sensitivity rows on the Ray executor against the local path, on a tiny model and a real local Ray of 2
workers.

Same map (and store keys) as the local path; every missing row is computed once and stored once; a second call
reads everything from the store and starts no worker; rows of an agreement sample are reused by a later exact
map; a cancel stops the workers and keeps finished rows; the CLI flags and the job's environment reach it.
The Ray tests are skipped where Ray is not installed (`pip install '.[ray]'`; `make test` installs it).
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest

from pruning_core import cli
from pruning_core.analysis.refinement import run_sensitivity_job
from pruning_core.analysis.sensitivity import SensitivitySpec, compute_sensitivity
from pruning_core.errors import ConfigError, JobCancelled
from pruning_core.executors.base import ExecutorConfig
from pruning_core.store import Store
from pruning_core.models import load_model
from pruning_core.protocol import Protocol
from tests.unit.conftest import ray_workers, ray_workers_gone

PROTOCOL = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=4, batch_size=4)
PROBE = 2
SPARSITIES = (0.4, 0.6)
RAY_2 = ExecutorConfig(kind="ray", workers=2)
# Ray actors compute with one thread, the test process with up to two. Wanda's rows come out bit-identical
# anyway, but a method whose weight update depends on the thread count (SparseGPT) moves a probe loss of about
# 6 nats by its float32 rounding (~5e-7 nats): values are compared to a relative 1e-5 or, for cells near zero,
# an absolute 1e-6 nats/token (most cells here are 1e-5 to 3e-3).
REL, ABS = 1e-5, 1e-6


class CountingStore(Store):
    """A real store that also records, for every write of an exact map's partial record, which rows it adds."""

    def __init__(self, path):
        super().__init__(path)
        self.rows_written: Counter = Counter()  # (partial key, layer) -> times written as a new row
        self._seen: dict[str, set] = {}

    def put_result(self, key, kind, payload, run_key=None):
        if kind == "sensitivity_partial":
            rows = set(payload["rows"])
            for layer in rows - self._seen.get(key, set()):
                self.rows_written[(key, layer)] += 1
            self._seen[key] = rows
        super().put_result(key, kind, payload, run_key=run_key)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")  # what each worker loads from the source "tiny-llama" (2 layers)


@pytest.fixture(scope="module")
def local_result(tiny):
    return compute_sensitivity(tiny, PROTOCOL, "wanda", SPARSITIES, ["exact", "fisher"], PROBE)


def assert_same_map(document: dict, reference: dict) -> None:
    for field in ("layers", "modules", "metric", "method", "sparsity", "module_names", "protocol"):
        assert document[field] == reference[field], field
    assert document["baseline_loss"] == pytest.approx(reference["baseline_loss"], rel=REL, abs=ABS)
    for row, expected in zip(document["values"], reference["values"], strict=True):
        assert row == pytest.approx(expected, rel=REL, abs=ABS), (document["metric"], document["sparsity"])
    assert document["layer_values"] == pytest.approx(reference["layer_values"], rel=REL, abs=ABS)


def test_ray_exact_maps_equal_the_local_ones_and_store_each_row_once(ray, tiny, local_result, tmp_path):
    store = CountingStore(tmp_path / "s.sqlite")
    rows_seen: list[tuple[float, int]] = []
    result = compute_sensitivity(tiny, PROTOCOL, "wanda", SPARSITIES, ["exact", "fisher"], PROBE, store=store,
                                 executor=RAY_2, on_exact_row=lambda s, layer, v, lv: rows_seen.append((s, layer)))
    n_layers = len(tiny.adapter.decoder_layers(tiny.model))
    execution = result["execution"]
    assert (execution["executor"], execution["workers"], execution["rows_computed"]) == ("ray", 2, 2 * n_layers)
    assert len(execution["worker_start_seconds"]) == 2 and execution["rows_seconds"] > 0
    assert local_result["execution"] == {"executor": "local", "workers": 1, "rows_computed": 2 * n_layers,
                                         "startup_seconds": 0.0, "rows_seconds": None, "worker_start_seconds": []}
    assert [(m["metric"], m["sparsity"]) for m in result["maps"]] == \
        [(m["metric"], m["sparsity"]) for m in local_result["maps"]]
    for document, reference in zip(result["maps"], local_result["maps"]):
        assert not document["cached"]
        assert_same_map(document, reference)
    for got, expected in zip(result["correlations"], local_result["correlations"], strict=True):
        assert got["spearman"] == pytest.approx(expected["spearman"], rel=REL, abs=1e-7)
    # Every row of both exact maps written once, and seen once by on_exact_row.
    assert len(store.rows_written) == 2 * n_layers and set(store.rows_written.values()) == {1}
    assert sorted(rows_seen) == sorted((s, layer) for s in SPARSITIES for layer in range(n_layers))
    assert ray_workers_gone(ray)

    # Same keys: a second call (on either executor) finds every map and starts no worker.
    for executor in (RAY_2, None):
        again = compute_sensitivity(tiny, PROTOCOL, "wanda", SPARSITIES, ["exact", "fisher"], PROBE, store=store,
                                    executor=executor)
        assert all(m["cached"] for m in again["maps"])
        assert again["execution"]["rows_computed"] == 0 and again["execution"]["worker_start_seconds"] == []
        assert not ray_workers(ray)
        for document, reference in zip(again["maps"], local_result["maps"]):
            assert_same_map(document, reference)
    assert set(store.rows_written.values()) == {1}


def test_agreement_sample_rows_run_on_ray_and_serve_the_exact_map(ray, tiny, local_result, tmp_path):
    store = CountingStore(tmp_path / "s.sqlite")
    proxy = compute_sensitivity(tiny, PROTOCOL, "wanda", [0.6], ["fisher"], PROBE, store=store, executor=RAY_2,
                                agreement_layers=1)
    assert proxy["execution"]["rows_computed"] == 1  # the sample: layer 0
    assert proxy["correlations"][0]["cells"] == len(tiny.adapter.module_kinds)
    exact = compute_sensitivity(tiny, PROTOCOL, "wanda", [0.6], ["exact"], PROBE, store=store, executor=RAY_2)
    assert exact["execution"]["rows_computed"] == 1  # layer 1 only; layer 0 came from the sample
    assert_same_map(exact["maps"][0], next(m for m in local_result["maps"] if m["metric"] == "exact"
                                           and m["sparsity"] == 0.6))
    assert set(store.rows_written.values()) == {1} and len(store.rows_written) == 2


def test_cancel_stops_the_workers_and_keeps_finished_rows(ray, tiny, local_result, tmp_path):
    store = CountingStore(tmp_path / "s.sqlite")
    rows: list[int] = []

    def progress(fraction: float, message: str) -> None:  # the job runner's cancel: raise at the next report
        if rows:
            raise JobCancelled("cancelled")

    with pytest.raises(JobCancelled):
        compute_sensitivity(tiny, PROTOCOL, "wanda", [0.4], ["exact"], PROBE, store=store, executor=RAY_2,
                            progress=progress, on_exact_row=lambda s, layer, v, lv: rows.append(layer))
    assert len(rows) == 1 and len(store.rows_written) == 1
    assert ray_workers_gone(ray)
    resumed = compute_sensitivity(tiny, PROTOCOL, "wanda", [0.4], ["exact"], PROBE, store=store)
    assert resumed["execution"]["rows_computed"] == 1
    assert_same_map(resumed["maps"][0], local_result["maps"][0])


def test_cli_sensitivity_on_ray_and_the_job_environment(ray, tiny, local_result, tmp_path, monkeypatch):
    monkeypatch.delenv("PRUNESCOPE_EXECUTOR", raising=False)
    out = tmp_path / "out"
    argv = ["sensitivity", "--model", "tiny-llama", "--calib", "news", "--nsamples", "4", "--seqlen", "32",
            "--eval-windows", "4", "--batch-size", "4", "--method", "wanda", "--sparsities", "0.4",
            "--metric", "exact", "--probe-windows", str(PROBE), "--executor", "ray", "--workers", "2",
            "--out", str(out)]
    assert cli.main(argv) == 0
    result = json.loads((out / "sensitivity_all.json").read_text())
    n_layers = len(tiny.adapter.decoder_layers(tiny.model))
    assert result["execution"]["executor"] == "ray" and result["execution"]["rows_computed"] == n_layers
    assert_same_map(result["maps"][0], local_result["maps"][0])
    assert "PRUNESCOPE_EXECUTOR" not in os.environ  # the flags applied to that run only

    # The job worker's way: the executor from the spec; the default metric refines on it too.
    spec = SensitivitySpec(model="tiny-llama", protocol=PROTOCOL, sparsities=(0.6,), probe_windows=PROBE,
                           executor=ExecutorConfig(kind="ray", workers=1)).to_dict()
    refined = run_sensitivity_job(spec, Store(tmp_path / "job.sqlite"), lambda fraction, message: None)
    assert refined["execution"]["executor"] == "ray" and refined["execution"]["workers"] == 1
    assert refined["execution"]["rows_computed"] == n_layers
    assert_same_map(refined["views"][0], local_result["maps"][2])  # the exact map at 0.6
    with pytest.raises(ConfigError, match="Executor 'dask' is unknown"):
        run_sensitivity_job({**spec, "executor": {"kind": "dask"}}, Store(tmp_path / "job.sqlite"),
                            lambda fraction, message: None)


def test_cli_refuses_remote_code_on_ray(tmp_path):
    argv = ["sensitivity", "--model", "tiny-llama", "--trust-remote-code", "--executor", "ray",
            "--out", str(tmp_path / "out")]
    assert cli.main(argv) == cli.EXIT_BAD_INPUT

"""Sweeps on the Ray executor against the local one, on a tiny model and a real local Ray of 2 workers.

Same points (and store keys) as the local executor; a worker killed mid-run loses no finished point and
stores none twice; a cancel stops the workers and keeps what finished; settings fail with a sentence.
The Ray tests are skipped where Ray is not installed (`pip install '.[ray]'`; `make test` installs it).
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import pytest

from pruning_core import cli
from pruning_core.analysis.sweep import SweepSpec, run_sweep, run_sweep_job
from pruning_core.errors import ConfigError, JobCancelled
from pruning_core.executors.base import ExecutorConfig, make_executor
from pruning_core.store import Store
from pruning_core.protocol import Protocol
from tests.unit.conftest import ray_workers, ray_workers_gone

PROTOCOL = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=4, batch_size=4)
# 12 points: two methods (one with data, one without) x six sparsities.
SPEC = SweepSpec(model="tiny-llama", methods=("magnitude", "wanda"), sparsities=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
                 eval_corpora=("news",), protocol=PROTOCOL)
RAY_2 = ExecutorConfig(kind="ray", workers=2)


class CountingStore(Store):
    """A real store that also counts its writes per key (the store itself keeps one row per key either way)."""

    def __init__(self):
        super().__init__()
        self.writes: Counter = Counter()

    def put_result(self, key, kind, payload, run_key=None):
        if kind == "sweep_point":
            self.writes[key] += 1
        super().put_result(key, kind, payload, run_key=run_key)


@pytest.fixture(scope="module")
def local_points():
    return run_sweep(SPEC)["points"]


def assert_same_points(points, expected):
    """Point for point, in grid order: same setting, same measured sparsity, same perplexities."""
    grid = [(config.method, config.effective_sparsity) for config, _ in SPEC.grid()]
    assert [(p["method"], p["target_sparsity"]) for p in points] == grid
    for point, reference in zip(points, expected):
        for field in ("method", "structure", "allocation", "plan_digest", "target_sparsity", "propagation"):
            assert point[field] == reference[field]
        assert point["sparsity"] == pytest.approx(reference["sparsity"], rel=1e-6)
        assert point["ppl"].keys() == reference["ppl"].keys()
        for corpus, value in reference["ppl"].items():
            assert point["ppl"][corpus] == pytest.approx(value, rel=1e-6), (point["method"], point["target_sparsity"])


def test_ray_sweep_gives_the_local_points_and_keys(ray, local_points):
    store = CountingStore()
    results = run_sweep(SPEC, store=store, executor=RAY_2)
    assert results["execution"]["executor"] == "ray" and results["execution"]["points_computed"] == 12
    assert len(results["execution"]["worker_start_seconds"]) == 2  # both workers started and answered
    assert not any(p["cached"] for p in results["points"])
    assert_same_points(results["points"], local_points)
    assert len(store.writes) == 12 and set(store.writes.values()) == {1}
    assert ray_workers_gone(ray)  # the actors end with the run
    # Same store keys: the local executor finds every point the Ray workers computed.
    again = run_sweep(SPEC, store=store)
    assert all(p["cached"] for p in again["points"]) and again["execution"]["points_computed"] == 0
    assert_same_points(again["points"], local_points)


def test_killed_workers_lose_no_point_and_store_each_once(ray, local_points):
    store = CountingStore()
    killed: list[str] = []
    seen: list[dict] = []

    def kill_workers_after_the_first_point(point: dict) -> None:
        seen.append(point)
        if not killed:  # both workers are busy with a point now: kill them (Ray may restart them)
            killed.extend(ray_workers(ray))
            for name in killed:
                ray.kill(ray.get_actor(name), no_restart=False)

    results = run_sweep(SPEC, store=store, executor=RAY_2, on_point=kill_workers_after_the_first_point)
    assert len(killed) == 2
    assert_same_points(results["points"], local_points)
    assert len(seen) == 12 and len({(p["method"], p["target_sparsity"]) for p in seen}) == 12
    assert len(store.writes) == 12 and set(store.writes.values()) == {1}


def test_cancel_stops_the_workers_and_keeps_finished_points(ray, local_points):
    store = CountingStore()
    finished: list[dict] = []

    def progress(fraction: float, message: str) -> None:  # the job runner's cancel: raise at the next report
        if finished:
            raise JobCancelled("cancelled")

    with pytest.raises(JobCancelled):
        run_sweep(SPEC, store=store, executor=RAY_2, progress=progress, on_point=finished.append)
    assert len(finished) == 1 and sum(store.writes.values()) == 1
    assert ray_workers_gone(ray)
    # A resumed run (on either executor) reuses the finished point and completes the same grid.
    resumed = run_sweep(SPEC, store=store)
    assert sum(p["cached"] for p in resumed["points"]) == 1
    assert_same_points(resumed["points"], local_points)


def test_job_reads_the_executor_from_its_spec(ray, monkeypatch):
    spec = SweepSpec(model="tiny-llama", methods=("wanda",), sparsities=(0.5,), eval_corpora=("news",),
                     protocol=PROTOCOL, executor=ExecutorConfig(kind="ray", workers=1))
    monkeypatch.setenv("PRUNESCOPE_EXECUTOR", "local")  # the environment is the command line's, not the job's
    results = run_sweep_job(spec.to_dict(), Store(), lambda fraction, message: None)
    assert results["execution"]["executor"] == "ray" and results["execution"]["workers"] == 1
    with pytest.raises(ConfigError, match="Executor 'dask' is unknown"):
        run_sweep_job({**spec.to_dict(), "executor": {"kind": "dask"}}, Store(), lambda fraction, message: None)


def test_cli_sweep_on_ray(ray, tmp_path):
    out = tmp_path / "out"
    argv = ["sweep", "--model", "tiny-llama", "--calib", "news", "--eval", "news", "--methods", "magnitude,wanda",
            "--structures", "unstructured,2:4", "--sparsities", "0.5", "--nsamples", "4", "--seqlen", "32",
            "--eval-windows", "2", "--executor", "ray", "--workers", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["execution"]["executor"] == "ray" and len(results["points"]) == 4


@pytest.mark.parametrize("settings,message", [
    (dict(kind="spark"), "Executor 'spark' is unknown; use one of local, ray"),
    (dict(kind="ray", workers=0), "workers must be a whole number of at least 1"),
    (dict(kind="ray", cpus_per_task=0), "cpus_per_task must be above 0"),
    (dict(kind="ray", gpus_per_task=-1), "gpus_per_task must be 0 or more"),
    (dict(kind="ray", address=" "), "The Ray address is empty"),
    (dict(kind="local", address="auto"), "choose the Ray executor to use it"),
])
def test_executor_settings_fail_with_a_sentence(settings, message):
    with pytest.raises(ConfigError, match=message):
        ExecutorConfig(**settings).validate()


def test_executor_settings_from_the_environment():
    assert ExecutorConfig.from_env({}) == ExecutorConfig()
    config = ExecutorConfig.from_env({"PRUNESCOPE_EXECUTOR": "Ray", "PRUNESCOPE_RAY_ADDRESS": "ray://head:10001",
                                      "PRUNESCOPE_WORKERS": "4"})
    assert (config.kind, config.address, config.workers) == ("ray", "ray://head:10001", 4)
    with pytest.raises(ConfigError, match="PRUNESCOPE_WORKERS='two' is not a whole number"):
        ExecutorConfig.from_env({"PRUNESCOPE_EXECUTOR": "ray", "PRUNESCOPE_WORKERS": "two"})


def test_without_ray_the_ray_executor_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    with pytest.raises(ConfigError, match=r"Ray is not installed: pip install '\.\[ray\]' \(or use --executor local\)"):
        make_executor(ExecutorConfig(kind="ray"))
    with pytest.raises(ConfigError, match="Ray is not installed"):
        run_sweep(SPEC, executor=ExecutorConfig(kind="ray"))


def test_workers_started_here_run_at_this_processs_priority(ray):
    # Ray's default niceness 15 starved the workers on a busy machine; they are the run's compute.
    import os

    @ray.remote
    def niceness() -> int:
        return os.nice(0)

    assert ray.get(niceness.remote()) == os.nice(0)

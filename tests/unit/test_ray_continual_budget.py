"""Continual step evaluations and budget-search points as executor tasks, on a tiny model.

Continual: the step models' evaluations run on Ray workers (2, real local Ray) or, deferred to one executor run,
on an in-process executor that hands results back in reverse order; either way the R matrices, BWT, records and
stored steps equal the local run's, and each distinct step model is evaluated once.
Budget: with W workers a round measures W points (coarse steps together, the bracket cut in W+1 parts); W = 1
visits exactly the sequential search's points; W = 2 finds the same edge in fewer rounds, and each point measured
on Ray has the local perplexity. The Ray tests are skipped where Ray is not installed (`pip install '.[ray]'`).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field

import pytest

from pruning_core import cli
from pruning_core.continual.run import ContinualSpec, run_continual, run_continual_job
from pruning_core.execution.executors import ExecutorConfig
from pruning_core.execution.store import Store
from pruning_core.models import load_model
from pruning_core.progress import no_progress
from pruning_core.protocol import Protocol

PROTOCOL = Protocol(nsamples=4, seqlen=32, eval_windows=4, batch_size=4)
CONTINUAL = ContinualSpec(model="tiny-llama", protocol=PROTOCOL, domains=("news", "pydocs", "wiki"))
RAY_2 = ExecutorConfig(kind="ray", workers=2)
#: Fields of a continual step record that are measured durations or paths, not results.
TIMINGS = ("seconds", "prune_seconds", "evaluation_seconds", "mask_dir")


class CountingStore(Store):
    """A real store that also counts its writes per key and kind."""

    def __init__(self, path):
        super().__init__(path)
        self.writes: Counter = Counter()

    def put_result(self, key, kind, payload, run_key=None):
        self.writes[(kind, key)] += 1
        super().put_result(key, kind, payload, run_key=run_key)


@dataclass
class ReversedExecutor:
    """An in-process stand-in for a parallel executor: it runs every task of a call (in order, on one worker)
    and hands the results back last first, as parallel workers may finish. `config` says how wide it is."""

    config: ExecutorConfig = field(default_factory=lambda: ExecutorConfig(kind="ray", workers=2))
    calls: list = field(default_factory=list)  # tasks per run call

    def run(self, recipe, tasks, progress_for=None, idle=None):
        self.calls.append(len(tasks))
        if not tasks:
            return
        worker = recipe.local() if recipe.local is not None else recipe.build(*recipe.args)
        results = [(index, worker.run(task, no_progress)) for index, task in enumerate(tasks)]
        if idle is not None:
            idle()
        yield from reversed(results)


@pytest.fixture(scope="module")
def ray():
    """One local Ray of 2 CPUs for the module (the executors join it instead of starting their own)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def local_continual(tiny, tmp_path_factory):
    store = CountingStore(tmp_path_factory.mktemp("local") / "s.sqlite")
    return run_continual(CONTINUAL, loaded=tiny, store=store), store


def results_only(result: dict) -> dict:
    """Per strategy: R, BWT, FWT, average, overlap and each step's record without its timings."""
    return {name: {**{k: v for k, v in figures.items() if k != "steps"},
                   "steps": [{k: v for k, v in step.items() if k not in TIMINGS} for step in figures["steps"]]}
            for name, figures in result["strategies"].items()}


def stored_steps(store: Store) -> dict:
    return {row["key"]: json.loads(row["payload"]) for row in
            store.execute("SELECT key, payload FROM results WHERE kind = 'continual_step'")}


def assert_same_continual(result: dict, reference: dict) -> None:
    assert list(result["strategies"]) == list(reference["strategies"])
    for name, figures in reference["strategies"].items():
        mine = result["strategies"][name]
        for row, expected in zip(mine["R"], figures["R"], strict=True):
            assert row == pytest.approx(expected, rel=1e-6), name
        assert mine["bwt"] == pytest.approx(figures["bwt"], rel=1e-6, abs=1e-9), name
        assert [list(step) for step in mine["steps"]] == [list(step) for step in figures["steps"]]  # same fields
        for step, expected in zip(mine["steps"], figures["steps"]):
            assert (step["from_store"], step["evaluation_reused"]) == (expected["from_store"],
                                                                      expected["evaluation_reused"])
            assert step["seconds"] == pytest.approx(step["prune_seconds"] + step["evaluation_seconds"])
    for counter in ("evaluations", "evaluations_reused", "steps_from_store"):
        assert result["work"][counter] == reference["work"][counter], counter


def test_continual_deferred_evaluations_assemble_the_local_run(tiny, local_continual, tmp_path):
    """Every distinct step model evaluated in one executor run, results back in reverse order: the same run."""
    reference, reference_store = local_continual
    executor = ReversedExecutor()
    store = CountingStore(tmp_path / "s.sqlite")
    result = run_continual(CONTINUAL, loaded=tiny, store=store, executor=executor)
    assert executor.calls == [reference["work"]["evaluations"]]  # one run of every distinct evaluation
    assert results_only(result) == results_only(reference)  # bit for bit: same masks, same evaluation
    assert_same_continual(result, reference)
    assert result["execution"]["evaluations_computed"] == reference["work"]["evaluations"]
    # The same store rows (keys and payloads), each written once.
    assert stored_steps(store) == stored_steps(reference_store)
    assert {n for (kind, _), n in store.writes.items() if kind == "continual_step"} == {1}
    # A resumed run takes every step from the store and evaluates nothing.
    again = run_continual(CONTINUAL, loaded=tiny, store=store, executor=ReversedExecutor())
    assert again["work"]["evaluations"] == 0 and again["execution"]["evaluations_computed"] == 0
    assert {n: f["R"] for n, f in again["strategies"].items()} == {n: f["R"] for n, f in result["strategies"].items()}


def test_continual_on_ray_equals_local_and_evaluates_each_step_model_once(ray, local_continual, tmp_path):
    reference, reference_store = local_continual
    store = CountingStore(tmp_path / "s.sqlite")
    result = run_continual(CONTINUAL, store=store, executor=RAY_2, out_dir=tmp_path / "out")
    assert_same_continual(result, reference)
    execution = result["execution"]
    assert (execution["executor"], execution["workers"]) == ("ray", 2)
    assert execution["evaluations_computed"] == result["work"]["evaluations"] == reference["work"]["evaluations"]
    assert len(execution["worker_start_seconds"]) == 2
    assert stored_steps(store).keys() == stored_steps(reference_store).keys()
    assert {n for (kind, _), n in store.writes.items() if kind == "continual_step"} == {1}
    assert (tmp_path / "out" / "copal" / "step-3" / "masks.safetensors").is_file()


def test_continual_job_reads_the_executor_from_the_environment(ray, monkeypatch, tmp_path):
    spec = ContinualSpec(model="tiny-llama", protocol=PROTOCOL, domains=("news", "pydocs"),
                         strategies=("latest", "joint"))
    monkeypatch.setenv("PRUNESCOPE_EXECUTOR", "ray")
    monkeypatch.setenv("PRUNESCOPE_WORKERS", "1")
    result = run_continual_job(spec.to_dict(), Store(tmp_path / "s.sqlite"), lambda fraction, message: None)
    assert result["execution"]["executor"] == "ray" and result["execution"]["workers"] == 1
    local = run_continual(spec)
    assert_same_continual(result, local)


def test_cli_continual_on_ray(ray, tmp_path):
    out = tmp_path / "out"
    argv = ["continual", "--model", "tiny-llama", "--domains", "news,pydocs", "--strategies", "latest,copal",
            "--nsamples", "4", "--seqlen", "32", "--eval-windows", "2", "--batch-size", "4", "--no-store",
            "--executor", "ray", "--workers", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    result = json.loads((out / "continual.json").read_text())
    assert result["execution"]["executor"] == "ray" and list(result["strategies"]) == ["latest", "copal"]

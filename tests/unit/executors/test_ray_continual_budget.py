"""Continual step evaluations and budget-search points as executor tasks, on a tiny model.

Continual: the step models' evaluations run on Ray workers (2, real local Ray) or, deferred to one executor run,
on an in-process executor that hands results back in reverse order; either way the R matrices, BWT, records and
stored steps equal the local run's, and each distinct step model is evaluated once.
Budget: with W workers a round measures W points (coarse steps together, the bracket cut in W+1 parts); W = 1
visits exactly the sequential search's points; W = 2 finds the same edge in fewer rounds, and each point measured
on Ray has the local perplexity. The Ray tests are skipped where Ray is not installed (`pip install '.[ray]'`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from pruning_core import cli
from pruning_core.allocation.budget import BudgetSpec, run_budget_job, search_budget
from pruning_core.continual.run import ContinualSpec, run_continual, run_continual_job
from pruning_core.errors import JobCancelled
from pruning_core.executors.base import ExecutorConfig
from pruning_core.store import Store
from pruning_core.models import load_model
from pruning_core.progress import no_progress
from pruning_core.protocol import Protocol
from tests.unit.conftest import ray_workers_gone

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
    sessions: int = 0

    def run(self, recipe, tasks, progress_for=None, idle=None):
        self.calls.append(len(tasks))
        if not tasks:
            return
        worker = recipe.local() if recipe.local is not None else recipe.build(*recipe.args)
        results = [(index, worker.run(task, no_progress)) for index, task in enumerate(tasks)]
        if idle is not None:
            idle()
        yield from reversed(results)

    @contextlib.contextmanager
    def session(self, recipe):
        """Several runs on the recipe (the executors' session interface); `sessions` counts them."""
        self.sessions += 1
        yield SimpleNamespace(run=lambda tasks, progress_for=None, idle=None: self.run(recipe, tasks, progress_for,
                                                                                       idle))


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


def test_continual_cancel_on_ray_stops_the_workers_and_keeps_evaluated_steps(ray, local_continual, tmp_path):
    reference, _ = local_continual
    store = CountingStore(tmp_path / "s.sqlite")

    def progress(fraction: float, message: str) -> None:  # the job runner's cancel: raise at the next report
        if "evaluated (1/" in message:
            raise JobCancelled("cancelled")

    with pytest.raises(JobCancelled):
        run_continual(CONTINUAL, store=store, executor=RAY_2, progress=progress)
    assert ray_workers_gone(ray)
    kept = stored_steps(store)
    assert 1 <= len(kept) < sum(len(f["steps"]) for f in reference["strategies"].values())
    assert len({step["digest"] for step in kept.values()}) == 1  # only the one finished evaluation's steps
    resumed = run_continual(CONTINUAL, store=store)
    assert resumed["work"]["steps_from_store"] == len(kept)
    for name, figures in reference["strategies"].items():
        for row, expected in zip(resumed["strategies"][name]["R"], figures["R"], strict=True):
            assert row == pytest.approx(expected, rel=1e-6), name


def test_continual_job_reads_the_executor_from_its_spec(ray, tmp_path):
    spec = ContinualSpec(model="tiny-llama", protocol=PROTOCOL, domains=("news", "pydocs"),
                         strategies=("latest", "joint"), executor=ExecutorConfig(kind="ray", workers=1))
    result = run_continual_job(spec.to_dict(), Store(tmp_path / "s.sqlite"), lambda fraction, message: None)
    assert result["execution"]["executor"] == "ray" and result["execution"]["workers"] == 1
    local = run_continual(spec, executor=ExecutorConfig())
    assert_same_continual(result, local)


def test_cli_continual_on_ray(ray, tmp_path):
    out = tmp_path / "out"
    argv = ["continual", "--model", "tiny-llama", "--domains", "news,pydocs", "--strategies", "latest,copal",
            "--nsamples", "4", "--seqlen", "32", "--eval-windows", "2", "--batch-size", "4", "--no-store",
            "--executor", "ray", "--workers", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    result = json.loads((out / "continual.json").read_text())
    assert result["execution"]["executor"] == "ray" and list(result["strategies"]) == ["latest", "copal"]


# ------------------------------------------------------------------------------------------------ budget search

DENSE = 20.0


def smooth(sparsity: float) -> float:
    """A monotone synthetic quality function: ppl = 20 * exp(3 s^2)."""
    return DENSE * math.exp(3.0 * sparsity ** 2)


def sequential_visits(fn, spec: BudgetSpec) -> list[float]:
    """The sequential search written out plainly: the sparsities it measures, in order (grid units, then
    fractions), coarse steps up from `low` to the first failing one, then halving the bracket."""
    res = spec.resolution
    low, high, coarse = round(spec.low / res), round(spec.high / res), max(1, round(spec.coarse_step / res))
    limit = fn(0.0) * (1 + spec.max_increase)
    visits: list[int] = []

    def passes(units: int) -> bool:
        visits.append(units)
        return fn(round(units * res, 6)) <= limit

    if not passes(low):
        return [round(u * res, 6) for u in visits]
    passing, failing, units = low, None, low
    while units < high:
        units = min(units + coarse, high)
        if passes(units):
            passing = units
        else:
            failing = units
            break
    while failing is not None and failing - passing > 1:
        middle = (passing + failing) // 2
        passing, failing = (middle, failing) if passes(middle) else (passing, middle)
    return [round(u * res, 6) for u in visits if u > 0]


def counting(fn):
    calls: list[float] = []

    def measure(sparsity: float) -> float:
        calls.append(sparsity)
        return fn(sparsity)

    return measure, calls


SPECS = [BudgetSpec(max_increase=increase) for increase in (0.02, 0.10, 0.25, 1.0, 1e6)] + [
    BudgetSpec(max_increase=0.10, low=0.13, high=0.77, coarse_step=0.07),
    BudgetSpec(max_increase=0.30, resolution=0.03, coarse_step=0.12, low=0.2),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.max_increase}-{s.low}-{s.coarse_step}")
def test_one_worker_visits_the_sequential_points_in_order(spec):
    measure, calls = counting(smooth)
    result = search_budget(None, spec, measure=measure)
    assert calls[0] == 0.0 and calls[1:] == sequential_visits(smooth, spec)
    measured = [row for row in result["trajectory"] if not row.get("dense")]
    assert [row["round"] for row in measured] == list(range(1, len(measured) + 1))  # one point a round
    assert result["execution"] == {**result["execution"], "executor": "local", "workers": 1,
                                   "rounds": len(measured), "points_computed": len(measured)}


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.max_increase}-{s.low}-{s.coarse_step}")
def test_w_workers_find_the_same_edge_in_fewer_rounds(spec, workers):
    one = search_budget(None, spec, measure=smooth)
    executor = ReversedExecutor(ExecutorConfig(kind="ray", workers=workers))
    measure, calls = counting(smooth)
    wide = search_budget(None, spec, measure=measure, executor=executor)
    assert wide["frontier"] == one["frontier"] and wide["certainty"]["gap_pp"] == one["certainty"]["gap_pp"]
    assert wide["certainty"]["bounded_by"] == one["certainty"]["bounded_by"]
    rounds = wide["execution"]["rounds"]
    assert (wide["execution"]["workers"], wide["execution"]["points_computed"]) == (workers, len(calls) - 1)
    assert executor.calls == [n for n in executor.calls if 1 <= n <= workers] and len(executor.calls) == rounds
    assert executor.sessions == 1  # every round ran in one session
    # Never more rounds (W steps up at a time; each cut leaves at most ceil(gap / (W + 1)) of the bracket), and
    # fewer on the default grid (a measured `low` and a 4-unit bracket can leave a W-section nothing to gain).
    assert rounds <= one["execution"]["rounds"]
    if spec.low == 0:
        assert rounds < one["execution"]["rounds"]
    assert len(set(calls)) == len(calls)  # no point measured twice
    # Rows: numbered in visit order, ascending sparsity within a round (whatever order the results came back in).
    trajectory = wide["trajectory"]
    assert [row["step"] for row in trajectory] == list(range(1, len(trajectory) + 1))
    for number in range(1, rounds + 1):
        sparsities = [row["sparsity"] for row in trajectory if row["round"] == number]
        assert 1 <= len(sparsities) <= workers and sparsities == sorted(sparsities)
        assert all(row["ppl"] == smooth(row["sparsity"]) for row in trajectory if row["round"] == number)


def test_w_section_of_a_wide_bracket_cuts_it_in_equal_parts():
    # +10 % of smooth: the edge is at 17.8 %; coarse steps of 40 points leave the bracket (0, 40).
    spec = BudgetSpec(max_increase=0.10, coarse_step=0.40, high=0.8)
    measure, calls = counting(smooth)
    result = search_budget(None, spec, measure=measure, executor=ReversedExecutor(ExecutorConfig(kind="ray",
                                                                                                 workers=3)))
    by_round: dict = {}
    for row in result["trajectory"]:
        by_round.setdefault(row["round"], []).append(row["sparsity"])
    assert by_round[1] == [0.4, 0.8]  # coarse: the two steps up to the top (three workers, two steps left)
    assert by_round[2] == [0.1, 0.2, 0.3]  # the bracket (0, 40) in four equal parts
    assert by_round[3] == [0.12, 0.15, 0.17]  # (10, 20): 10 // 4 points apart, floored on the grid
    assert result["frontier"]["sparsity"] == pytest.approx(0.17)


BUDGET = dict(model="tiny-llama", protocol=Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=3,
                                                    batch_size=4),
              method="wanda", coarse_step=0.2, resolution=0.1, high=0.4)
#: The random tiny model's wanda perplexity on news is monotone up to 40 % (285.34, 285.38, 285.70, 286.36, 286.81
#: at 0-40 %), not above: a budget of 286 has its edge between 20 and 30 %.
EDGE_PPL = 286.0


def test_budget_on_ray_measures_each_point_as_locally(ray, tiny, tmp_path):
    """Ray with 2 workers against the same 2-wide rounds in this process: the same points and perplexities; and
    the frontier of the sequential search where the tiny model's perplexity is monotone in sparsity."""
    spec = BudgetSpec(max_ppl=EDGE_PPL, **BUDGET)
    sequential = search_budget(tiny, spec)
    assert sequential["certainty"]["ppl_monotone"] and sequential["frontier"]["sparsity"] == 0.2
    in_process = search_budget(tiny, spec, executor=ReversedExecutor())
    store = CountingStore(tmp_path / "s.sqlite")
    on_ray = search_budget(tiny, spec, store=store, executor=RAY_2)
    assert on_ray["execution"]["executor"] == "ray" and on_ray["execution"]["workers"] == 2
    assert on_ray["execution"]["rounds"] < sequential["execution"]["rounds"]
    # One session for the whole search: each of the 2 workers was started once, however many rounds ran.
    assert on_ray["execution"]["rounds"] > 1 and len(on_ray["execution"]["worker_start_seconds"]) == 2
    assert [r["sparsity"] for r in on_ray["trajectory"]] == [r["sparsity"] for r in in_process["trajectory"]]
    for row, expected in zip(on_ray["trajectory"], in_process["trajectory"]):
        assert row["ppl"] == pytest.approx(expected["ppl"], rel=1e-6) and row["round"] == expected["round"]
        assert row.get("measured_sparsity") == expected.get("measured_sparsity")
    assert on_ray["frontier"]["sparsity"] == sequential["frontier"]["sparsity"]
    local_ppl = {r["sparsity"]: r["ppl"] for r in sequential["trajectory"]}
    for row in on_ray["trajectory"]:
        if row["sparsity"] in local_ppl:
            assert row["ppl"] == pytest.approx(local_ppl[row["sparsity"]], rel=1e-6)
    # Stored under the local keys, once each: the local search re-measures nothing Ray measured.
    points = {key: n for (kind, key), n in store.writes.items() if kind == "budget_point"}
    assert len(points) == on_ray["execution"]["points_computed"]
    again = search_budget(tiny, spec, store=store)
    measured_on_ray = {r["sparsity"] for r in on_ray["trajectory"] if r["sparsity"] > 0}
    assert all(r["reused"] for r in again["trajectory"] if r["sparsity"] in measured_on_ray)


def test_budget_job_and_cli_read_the_executor(ray, monkeypatch, tmp_path):
    spec = BudgetSpec(max_increase=1e6, executor=ExecutorConfig(kind="ray", workers=2),
                      **{**BUDGET, "coarse_step": 0.5, "high": 0.9})
    result = run_budget_job(spec.to_dict(), Store(tmp_path / "s.sqlite"), lambda fraction, message: None)
    assert result["execution"]["executor"] == "ray" and result["execution"]["rounds"] == 1
    assert [r["sparsity"] for r in result["trajectory"]] == [0.0, 0.5, 0.9]
    argv = ["budget", "--model", "tiny-llama", "--method", "wanda", "--max-increase", "10%", "--calib", "news",
            "--nsamples", "4", "--seqlen", "32", "--eval-windows", "2", "--coarse-step", "30%", "--resolution",
            "0.1", "--high", "0.9", "--executor", "ray", "--workers", "2", "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 0
    written = json.loads((tmp_path / "out" / "budget.json").read_text())
    assert written["execution"]["executor"] == "ray" and written["execution"]["workers"] == 2
    assert "PRUNESCOPE_EXECUTOR" not in os.environ  # the flags do not outlive the command


def test_budget_cancel_on_ray_stops_the_workers_and_keeps_finished_points(ray, tiny, tmp_path):
    spec = BudgetSpec(max_increase=1e6, **{**BUDGET, "coarse_step": 0.1})
    store = CountingStore(tmp_path / "s.sqlite")

    def progress(fraction: float, message: str) -> None:  # cancel at the first measured point's verdict
        if ": ppl " in message and not message.startswith("0%"):
            raise JobCancelled("cancelled")

    with pytest.raises(JobCancelled):
        search_budget(tiny, spec, store=store, progress=progress, executor=RAY_2)
    assert ray_workers_gone(ray)
    stored = [key for (kind, key) in store.writes if kind == "budget_point"]
    assert len(stored) == 1  # the point whose result came back; its round's other point is not stored
    resumed = search_budget(tiny, spec, store=store)
    assert sum(r["reused"] for r in resumed["trajectory"] if r["sparsity"] > 0) == 1

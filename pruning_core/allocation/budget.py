"""The most sparsity a quality budget allows: a step-wise search of the global sparsity, re-measuring each step.

Given a budget (a relative perplexity increase over the dense model, e.g. +10 %, or an absolute perplexity) on
one evaluation corpus, or on several judged by the worst of them (every step must hold on each: a setting within
+10 % on wiki but +24 % on the user's own text is over the budget), `search_budget` prunes with one method x allocator at growing global sparsities (coarse
steps, `coarse_step` apart) until a step breaks the budget, then bisects between the last passing and the first
failing step down to `resolution`. This is the adaptive, step-wise pruning of the adaptive sparse fine-tuning line
of work, without the fine-tuning: each step is a fresh prune of the dense model at that global target.

Every measurement goes through `evaluate.evaluate_setting` (the one evaluation path; the dense perplexity is
measured once and kept in the store) and is stored under a key of everything that determines it (model,
calibration, protocol, method, structure, propagation, the plan's content digest, evaluation corpus; one stored
point per corpus), so a second search, a search for a neighbouring budget, or a search on more corpora, re-measures
nothing it already has (a step already measured on wiki is measured on news only). Every sparsity the search
visits lies on a grid of `resolution` (1 percentage point by default), which is what makes neighbours share
points.

What the search assumes: perplexity grows with global sparsity, so "within budget" holds below some edge and
fails above it. That is true only roughly: on a real model perplexity is noisy by a few tenths of a percent
between neighbouring sparsities (different masks, a finite evaluation set), and a plan-making allocator may
change its plan's shape from one target to the next. The search therefore finds *an* edge where a passing step
sits `resolution` below a failing one; it never looks above the first failing coarse step, so a pass further up
(a non-monotone bump) is not seen. The result says how sure it is: the evaluation windows behind each figure,
the gap between the last passing and first failing step, and whether the measured perplexities it saw were in
fact monotone in sparsity.

Where points are measured: each point is a unit of work (`BudgetPointTask`, computed by a `BudgetWorker`) for an
executor (`pruning_core.executors.base`); the driver makes the plans and alone reads and writes the store.
With W workers the search goes in rounds of W points (the next W coarse steps; W cuts of the bracket into W + 1
equal parts): it may measure more points than the sequential search but needs fewer rounds; with W = 1 (the
local executor) it is the sequential search, point for point.
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack, closing
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional

from pruning_core.allocation.allocators import AllocationInputs, get_allocator, make_plan
from pruning_core.allocation.setting_plan import check_setting
from pruning_core.errors import ConfigError
from pruning_core.executors.base import ExecutorConfig, WorkerRecipe, load_worker_model, make_executor
from pruning_core.masks import parse_structure
from pruning_core.methods import get_method
from pruning_core.progress import ProgressFn, no_progress, sub_progress
from pruning_core.protocol import Protocol
from pruning_core.setting import Setting
from pruning_core.spec import JobSpec, job_spec

#: A sparsity -> perplexity function (the search's only view of quality; tests inject a synthetic one): a number
#: (the perplexity on the budget's one corpus) or {corpus: perplexity} for a search on several corpora.
MeasureFn = Callable[[float], "float | Mapping[str, float]"]

#: Kinds of store rows this module writes.
POINT_KIND = "budget_point"
RESULT_KIND = "budget_result"


@job_spec
@dataclass(frozen=True)
class BudgetSpec(JobSpec):
    """What to search.

    model: model source (as `load_model` takes it). protocol: calibration and evaluation settings.
    setting: the method, `allocation` (an allocator of `allocators.ALLOCATORS`), structure ("unstructured": an
    N:M structure fixes its own sparsity, so there is nothing to search) and propagation ("pruned", the papers'
    protocol, or "dense") of every step; its sparsity is what the search finds, so it is not read.
    corpus: evaluation corpus of the budget; None = the calibration corpus (its evaluation split).
    more_corpora: further evaluation corpora the budget must hold on too: each step is judged on the worst of
    `corpus` and these (the largest relative increase; the largest perplexity for an absolute budget). Empty (the
    default) keeps a one-corpus search's dict, and so its job and run keys, as they were.
    max_increase: budget as a relative perplexity increase over dense (0.10 = +10 %), or
    max_ppl: budget as an absolute perplexity; give exactly one.
    coarse_step: distance of the first, upward steps (fraction; 0.10 = 10 points of sparsity).
    resolution: the bisection stops when the last passing and first failing step are this close; every visited
    sparsity lies on a grid of it (0.01 = 1 percentage point).
    low, high: the range searched (fractions); `low` must pass for there to be a frontier.
    sensitivity: path of a sensitivity result JSON (`prunescope sensitivity`'s output) for the "sensitivity"
    allocator; None = maps of this model and method found in the store.
    options: allocator options as (name, value) pairs (e.g. (("M", 5.0), ("lambda", 0.08)) for OWL).
    executor: where the steps are measured (`ExecutorConfig`; not part of any key: it changes no number).
    """

    WHAT = "budget"
    SETTING_KEYS = {"method": "method", "allocation": "allocation", "structure": "structure",
                    "propagation": "propagation"}

    model: str = "embedded"
    protocol: Protocol = field(default_factory=Protocol)
    setting: Setting = field(default_factory=lambda: Setting(allocation="uniform"))
    corpus: Optional[str] = None
    more_corpora: tuple[str, ...] = ()
    max_increase: Optional[float] = None
    max_ppl: Optional[float] = None
    coarse_step: float = 0.10
    resolution: float = 0.01
    low: float = 0.0
    high: float = 0.95
    sensitivity: Optional[str] = None
    options: tuple[tuple[str, Any], ...] = ()
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    @property
    def eval_corpus(self) -> str:
        """The first corpus the budget is measured on (the only one unless `more_corpora` are given)."""
        return self.corpus or self.protocol.calib

    @property
    def eval_corpora(self) -> tuple[str, ...]:
        """Every corpus the budget is judged on, `eval_corpus` first, each once."""
        return tuple(dict.fromkeys((self.eval_corpus, *self.more_corpora)))

    def validate(self) -> "BudgetSpec":
        """Check every setting before any work starts; raises ConfigError naming the bad value and the fix."""
        self.protocol.validate()
        check_setting(self.setting)
        if parse_structure(self.setting.structure).is_nm:
            raise ConfigError(f"Structure '{self.setting.structure}' fixes the sparsity at N:M, so there is no "
                              "sparsity to search; use 'unstructured' for a budget search.")
        if (self.max_increase is None) == (self.max_ppl is None):
            raise ConfigError("Give exactly one budget: a relative perplexity increase (e.g. 10%) or an absolute "
                              "perplexity (e.g. 30).")
        if self.max_increase is not None and not (math.isfinite(self.max_increase) and self.max_increase >= 0):
            raise ConfigError(f"The allowed increase {self.max_increase:g} must be a fraction >= 0, e.g. 0.10 "
                              "for +10 %.")
        if self.max_ppl is not None and not (math.isfinite(self.max_ppl) and self.max_ppl > 0):
            raise ConfigError(f"The perplexity budget {self.max_ppl:g} must be a positive number.")
        if not 0.0 < self.resolution <= 0.5:
            raise ConfigError(f"Resolution {self.resolution:g} must be in (0, 0.5]; 0.01 is one percentage point.")
        if self.coarse_step < self.resolution:
            raise ConfigError(f"The coarse step {self.coarse_step:g} is finer than the resolution "
                              f"{self.resolution:g}; make it at least as large.")
        if not 0.0 <= self.low < self.high < 1.0:
            raise ConfigError(f"Bounds {self.low:g}..{self.high:g} must satisfy 0 <= low < high < 1.")
        if any(not isinstance(c, str) or not c.strip() for c in self.more_corpora):
            raise ConfigError(f"The further corpora {list(self.more_corpora)} must be corpus names, e.g. news.")
        self.executor.validate()
        return self

    def _flat(self) -> dict:
        # "more_corpora" only when given: a one-corpus search's dict (its job and run keys) is the one stored before.
        more = {"more_corpora": list(self.more_corpora)} if self.more_corpora else {}
        return {"model": self.model, "protocol": self.protocol.to_dict(), **self.setting_dict(),
                "corpus": self.corpus, **more, "max_increase": self.max_increase, "max_ppl": self.max_ppl,
                "coarse_step": self.coarse_step, "resolution": self.resolution, "low": self.low,
                "high": self.high, "sensitivity": self.sensitivity, "options": dict(self.options)}

    @classmethod
    def _from_flat(cls, d: dict) -> dict:
        d["options"] = tuple((d.get("options") or {}).items())
        d["more_corpora"] = tuple(d.get("more_corpora") or ())
        return d

    def passes(self, ppl: float, dense_ppl: float) -> bool:
        """Whether perplexity `ppl` is within the budget (a NaN or infinite perplexity never is)."""
        if not math.isfinite(ppl):
            return False
        if self.max_ppl is not None:
            return ppl <= self.max_ppl
        return ppl <= dense_ppl * (1.0 + self.max_increase)

    def limit(self, dense_ppl: float) -> float:
        """The highest perplexity within the budget on a corpus whose dense perplexity is `dense_ppl`."""
        return self.max_ppl if self.max_ppl is not None else dense_ppl * (1.0 + self.max_increase)

    def worst(self, ppls: Mapping[str, float], dense_ppls: Mapping[str, float]) -> str:
        """The corpus that decides a step measured as `ppls` ({corpus: perplexity}): the one with the largest
        relative increase over its dense perplexity (the largest perplexity for an absolute budget); a
        non-finite perplexity is the worst of all. Ties go to the first corpus of `eval_corpora`."""
        def badness(corpus: str) -> float:
            ppl = float(ppls[corpus])
            if not math.isfinite(ppl):
                return math.inf
            return ppl if self.max_ppl is not None else ppl / float(dense_ppls[corpus])

        return max((c for c in self.eval_corpora if c in ppls), key=badness)

    def describe(self) -> str:
        """The budget in words, e.g. '+10 % perplexity on wiki', '+10 % perplexity on the worst of wiki, news'."""
        on = self.eval_corpus if len(self.eval_corpora) == 1 else "the worst of " + ", ".join(self.eval_corpora)
        if self.max_ppl is not None:
            return f"perplexity <= {self.max_ppl:g} on {on}"
        return f"+{self.max_increase * 100:g} % perplexity on {on}"


def parse_fraction(text: str, what: str = "increase") -> float:
    """'10%' -> 0.10, '0.1' -> 0.1, '+25 %' -> 0.25. A bare number above 5 is refused as ambiguous."""
    raw = str(text).strip().replace(" ", "").lstrip("+")
    try:
        if raw.endswith("%"):
            return float(raw[:-1]) / 100.0
        value = float(raw)
    except ValueError:
        raise ConfigError(f"The {what} '{text}' is not a number; write it as 10% or 0.10.") from None
    if value > 5:
        raise ConfigError(f"The {what} '{text}' reads as {value * 100:g} %; write 10% (or 0.10) for +10 %.")
    return value


# ------------------------------------------------------------------------------------------------ the search


def _grid(value: float, resolution: float) -> int:
    """`value` in units of `resolution` (the search works on integers, so visited sparsities repeat exactly)."""
    return int(round(value / resolution))


def search_budget(loaded, spec: BudgetSpec, *, measure: Optional[MeasureFn] = None, store=None,
                  progress: Optional[ProgressFn] = None, sensitivity: Optional[Mapping] = None,
                  executor=None) -> dict:
    """The most global sparsity (by parameters) whose perplexity stays within `spec`'s budget.

    loaded: the model (`LoadedModel`, left unchanged); may be None only when `measure` is given.
    measure: sparsity -> perplexity on the budget's corpus (or {corpus: perplexity} on each of
    `spec.eval_corpora`); default the real one (prune with the allocator's plan, evaluate with `evaluate_setting`
    on every corpus of the budget, reuse and fill `store`). With an injected `measure` the dense perplexity is
    `measure(0.0)` and nothing is stored.
    Several corpora (`spec.more_corpora`): each step passes only when it holds on every one; its row says which
    corpus decided ("corpus", the worst) and its "ppl"/"increase" are that corpus's.
    sensitivity: a sensitivity result for the "sensitivity" allocator (default: `spec.sensitivity`'s file, else
    maps in `store`).
    executor: where the points are measured: None (the spec's `executor`) or an `ExecutorConfig` of kind "local"
    (this process), an
    `ExecutorConfig` of kind "ray" (Ray workers, each loading `spec.model` itself), or an executor object. With
    W workers each round measures W points together: the coarse phase the next W coarse steps (the first failing
    one ends it), the bisection W cuts of the bracket into W + 1 equal parts on the resolution grid. W = 1 (local)
    visits exactly the points of the sequential search, in its order. With W > 1 a search may measure more
    points than the sequential one (points above the first failing step of a round are measured, reported in the
    trajectory and in "ppl_monotone", but never move the frontier) and needs fewer rounds. Plans are made, and
    points read from and written to `store` under the same keys, by this driver alone.
    Returns {"frontier": {"sparsity", "ppl", "increase", "corpus" (the worst corpus there), "dense_ppl" (its
    dense perplexity), "ppls" ({corpus: perplexity})} of the last passing step (None when even `low` fails),
    "trajectory": [{"step", "phase", "sparsity", "ppl", "increase", "passed", "reused", "round", ...}] in visit
    order, ascending sparsity within a round ("round": the round it was measured in, points of one round are
    measured together; 0 = the dense start, which needs no measurement; a `low` of 0 is the dense model itself,
    marked "dense"; measured steps add plan_sparsity, measured_sparsity, plan_digest, allocator, windows,
    prune_seconds, eval_seconds; every row has "ppls" {corpus: perplexity} and "corpus", the worst of them),
    "certainty": {"eval_windows", "gap_pp" (first failing - last passing, percentage points; None when `high`
    passed), "evaluations" (points the search used), "measured" (of them, measured now), "reused",
    "grid_evaluations" (what a 2-point grid over the range would need), "ppl_monotone", "bounded_by"},
    "dense_ppl" (on `spec.eval_corpus`), "dense_ppls" ({corpus: perplexity}), "budget" ({"text", "max_ppl" (the
    limit on `eval_corpus`), "corpus", "corpora", "limits" {corpus: limit}}), "spec", "protocol", "machine", "seconds",
    "execution": {"executor", "workers" (W), "rounds", "points_computed", "seconds" {"startup" (starting or
    joining Ray, driver-side), "points" (waiting for the executor's points, less startup)},
    "worker_start_seconds" [per Ray worker and round]}}.
    Sparsities are fractions; perplexity has no unit; seconds are wall seconds.
    """
    spec = spec.validate()
    progress = progress or no_progress
    start = time.perf_counter()
    if executor is None:
        executor = spec.executor
    if isinstance(executor, ExecutorConfig):
        executor = make_executor(executor)  # a missing Ray fails here, before any work
    width = executor.config.workers if executor.config.kind != "local" else 1
    if measure is None:
        if loaded is None:
            raise ConfigError("A budget search needs a model; load one first.")
        measurer = _RealMeasure(loaded, spec, store, progress, sensitivity)
    else:
        measurer = _InjectedMeasure(measure, spec.eval_corpora)
    progress(0.0, f"dense perplexity on {', '.join(spec.eval_corpora)}")
    dense_ppls = measurer.dense()
    dense_ppl = dense_ppls[spec.eval_corpus]
    limits = {c: spec.limit(dense_ppls[c]) for c in spec.eval_corpora}

    res = spec.resolution
    low, high, coarse = _grid(spec.low, res), _grid(spec.high, res), max(1, _grid(spec.coarse_step, res))
    # Progress: the coarse steps to the top plus the bisection's halvings (an upper bound; the search stops early).
    expected = max(1, (high - low + coarse - 1) // coarse + max(1, math.ceil(math.log2(coarse))))
    trajectory: list[dict] = []
    seen: dict[int, dict] = {}
    execution = {"executor": executor.config.kind, "workers": width, "rounds": 0, "points_computed": 0,
                 "seconds": {"startup": 0.0, "points": 0.0}, "worker_start_seconds": []}

    def fractions(index: int) -> tuple[float, float]:
        return min(index / expected, 0.99), min((index + 1) / expected, 0.99)

    def record(units: int, index: int, phase: str, point: dict, number: int) -> dict:
        sparsity = round(units * res, 6)
        ppls = {c: float(point["ppls"][c]) for c in spec.eval_corpora}
        worst = spec.worst(ppls, dense_ppls)  # the step holds on every corpus only if it holds on this one
        ppl, dense = ppls[worst], dense_ppls[worst]
        row = {"step": index + 1, "phase": phase, "sparsity": sparsity, "ppl": ppl,
               "increase": ppl / dense - 1.0 if dense > 0 else None,
               "passed": spec.passes(ppl, dense), "reused": bool(point.get("reused", False)), "round": number,
               "corpus": worst, "ppls": ppls, **{k: v for k, v in point.items() if k not in ("ppls", "reused")}}
        verdict = "within" if row["passed"] else "over"
        on = f" on {worst}" if len(ppls) > 1 else ""
        progress(fractions(index)[1], f"{sparsity:.0%}: ppl{on} {ppl:.3f} ({verdict} the budget {limits[worst]:.3f})")
        return row

    def measure_round(points: list[int], phase: str) -> None:
        """Measure the grid points `points` together (one round): stored ones from the store, the others as
        executor tasks; their rows join the trajectory in ascending sparsity."""
        todo = [units for units in sorted(set(points)) if units not in seen]
        if not todo:
            return
        number = 0 if todo == [0] else execution["rounds"] + 1  # the dense start needs no measurement
        execution["rounds"] = max(execution["rounds"], number)
        first = len(trajectory)
        rows: list[Optional[dict]] = [None] * len(todo)
        tasks, owners = [], []  # executor tasks and the position in `todo` of each
        for position, units in enumerate(todo):
            sparsity = round(units * res, 6)
            lo_f, hi_f = fractions(first + position)
            progress(lo_f, f"step {first + position + 1}: {spec.setting.method} {spec.setting.allocator_name} at "
                           f"{sparsity:.0%} "
                           f"({phase})")
            if units == 0:
                point = {"ppls": dense_ppls, "reused": measurer.dense_reused, "dense": True}
            else:
                point, task = measurer.prepare(sparsity, sub_progress(progress, lo_f, hi_f))
                if point is None:
                    tasks.append(task)
                    owners.append(position)
                    continue
            rows[position] = record(units, first + position, phase, point, number)

        def task_progress(index: int) -> ProgressFn:  # the local executor runs tasks in order: the point's range
            return sub_progress(progress, *fractions(first + owners[index]))

        def waiting() -> None:  # a Ray run calls this while every worker is busy: cancel and heartbeat go here
            done = sum(row is not None for row in rows)
            progress(fractions(first)[0], f"round {number}: {done}/{len(todo)} points done; running on "
                                          f"{executor.config.describe()}")

        if tasks:
            pool = session()
            begin = time.perf_counter()
            with closing(pool.run(tasks, task_progress, waiting)) as finished:
                for index, outcome in finished:
                    position = owners[index]
                    if rows[position] is not None:  # one result per task; never store a point twice
                        continue
                    point = measurer.complete(tasks[index], outcome)
                    rows[position] = record(todo[position], first + position, phase, point, number)
            execution["points_computed"] += len(tasks)
            execution["seconds"]["points"] += time.perf_counter() - begin
        for units, row in zip(todo, rows):
            trajectory.append(row)
            seen[units] = row

    def first_failure(points: list[int], passing: Optional[int]) -> tuple[Optional[int], Optional[int]]:
        """(last passing point below the first failing one, or `passing`; first failing point or None)."""
        for units in sorted(points):
            if not seen[units]["passed"]:
                return passing, units
            passing = units
        return passing, None

    passing: Optional[int] = None
    failing: Optional[int] = None
    # One executor session for every round, opened when the first point needs measuring: the workers (and
    # the model each loads) are made once per search, not once per round.
    stack = ExitStack()
    opened: list = []

    def session():
        if not opened:
            begin = time.perf_counter()
            opened.append(stack.enter_context(executor.session(measurer.recipe())))
            execution["seconds"]["startup"] += time.perf_counter() - begin
        return opened[0]

    with stack:
        measure_round([low], "start")
        if seen[low]["passed"]:
            passing = low
            units = low
            while units < high and failing is None:  # coarse steps upward; the top of the range is always a step
                batch = []
                while len(batch) < width and units < high:
                    units = min(units + coarse, high)
                    batch.append(units)
                measure_round(batch, "coarse")
                passing, failing = first_failure(batch, passing)
            while failing is not None and failing - passing > 1:  # W-section of the bracket on the resolution grid
                gap = failing - passing
                cuts = sorted({passing + k * gap // (width + 1) for k in range(1, width + 1)} - {passing, failing})
                measure_round(cuts, "bisect")
                passing, cut_failing = first_failure(cuts, passing)
                failing = cut_failing if cut_failing is not None else failing
        else:
            failing = low
    execution["worker_start_seconds"] = list(getattr(executor, "worker_start_seconds", [])) if opened else []

    frontier = None
    if passing is not None:
        best = seen[passing]
        frontier = {"sparsity": best["sparsity"], "ppl": best["ppl"], "increase": best["increase"],
                    "corpus": best["corpus"], "dense_ppl": dense_ppls[best["corpus"]], "ppls": dict(best["ppls"]),
                    **{k: best[k] for k in ("plan_sparsity", "measured_sparsity") if k in best}}
    measured_points = [r for r in trajectory if not r.get("dense")]
    ordered = sorted(measured_points, key=lambda r: r["sparsity"])
    # Monotone on every corpus (the worst corpus may change from step to step, so its "ppl" is not comparable).
    monotone = all(a["ppls"][c] <= b["ppls"][c] for a, b in zip(ordered, ordered[1:]) for c in spec.eval_corpora)
    grid_points = int(math.floor((spec.high - spec.low) / 0.02 + 1e-9)) + 1
    certainty = {
        "eval_windows": measurer.windows,
        "gap_pp": None if passing is None or failing is None else round((failing - passing) * res * 100, 6),
        "evaluations": len(measured_points),
        "measured": sum(1 for r in measured_points if not r["reused"]),
        "reused": sum(1 for r in measured_points if r["reused"]),
        "grid_evaluations": grid_points,
        "ppl_monotone": monotone,
        "bounded_by": ("the upper bound" if failing is None else
                       "the lower bound already fails" if passing is None else "a failing step"),
    }
    result = {
        "frontier": frontier,
        "trajectory": trajectory,
        "certainty": certainty,
        "dense_ppl": dense_ppl,
        "dense_ppls": dict(dense_ppls),
        "budget": {"text": spec.describe(), "max_ppl": limits[spec.eval_corpus], "corpus": spec.eval_corpus,
                   "corpora": list(spec.eval_corpora), "limits": limits},
        "spec": spec.to_dict(),
        "protocol": measurer.protocol(),
        "machine": _machine(),
        "seconds": time.perf_counter() - start,
        "prune_seconds": sum(r.get("prune_seconds", 0.0) for r in measured_points if not r["reused"]),
        "eval_seconds": sum(r.get("eval_seconds", 0.0) for r in measured_points if not r["reused"]),
        "execution": execution,
    }
    measurer.finish(result)
    progress(1.0, "budget search done: " + (f"{frontier['sparsity']:.0%} within {spec.describe()}"
                                             if frontier else f"no sparsity >= {spec.low:.0%} within the budget"))
    return result


def _machine() -> dict:
    from pruning_core.provenance import environment

    return environment()


class _InjectedMeasure:
    """A caller's sparsity -> perplexity function (tests, what-if estimates): no model, no store."""

    windows = None
    dense_reused = False

    def __init__(self, measure: MeasureFn, corpora: tuple[str, ...]):
        self.measure, self.corpora = measure, corpora

    def dense(self) -> dict[str, float]:
        return _per_corpus(self.measure(0.0), self.corpora)

    def prepare(self, sparsity: float, progress: ProgressFn) -> tuple[Optional[dict], Any]:  # noqa: ARG002
        """(None, task): nothing is stored, so every point is a task; the task is the sparsity."""
        return None, sparsity

    def recipe(self) -> WorkerRecipe:
        return WorkerRecipe(build=_InjectedWorker, args=(self.measure,), local=lambda: _InjectedWorker(self.measure))

    def complete(self, task: float, outcome) -> dict:  # noqa: ARG002
        return {"ppls": _per_corpus(outcome, self.corpora), "reused": False}

    def protocol(self) -> dict:
        return {"measure": "injected"}

    def finish(self, result: dict) -> None:
        pass


class _InjectedWorker:
    """Runs an injected measure: task = a sparsity, result = its perplexity."""

    def __init__(self, measure: MeasureFn):
        self.measure = measure

    def run(self, task: float, progress: ProgressFn):  # noqa: ARG002
        return self.measure(task)


def _per_corpus(measured, corpora: tuple[str, ...]) -> dict[str, float]:
    """An injected measurement as {corpus: perplexity}: a number is the one corpus's; a mapping must name each."""
    if not isinstance(measured, Mapping):
        if len(corpora) != 1:
            raise ConfigError(f"A search on {len(corpora)} corpora needs {{corpus: perplexity}} from its measure, "
                              f"for each of {', '.join(corpora)}.")
        return {corpora[0]: float(measured)}
    missing = [c for c in corpora if c not in measured]
    if missing:
        raise ConfigError(f"The measure gave no perplexity on {', '.join(missing)}; give one for every corpus.")
    return {c: float(measured[c]) for c in corpora}


@dataclass(frozen=True)
class BudgetPointTask:
    """One point of a budget search to measure: the global target, the setting with the plan the driver made
    for it (`PruneConfig`), how progress names it, the corpora to evaluate it on (those the store lacks), their
    store keys ({corpus: key}; empty without a store; the driver's) and the perplexities the store already had
    on the budget's other corpora."""

    sparsity: float
    config: Any
    label: str
    corpora: tuple[str, ...] = ()
    keys: Mapping[str, str] = field(default_factory=dict)
    known: Mapping[str, float] = field(default_factory=dict)


class BudgetWorker:
    """Prunes and evaluates budget points on one loaded model; no store (the driver owns it).

    Keeps what its points share: the layer-0 inputs of the calibration windows (pruned propagation, captured at
    the first point). calib_ids: (nsamples, seqlen) token ids, None when no point walks data (magnitude, dense
    propagation); eval_ids: {corpus: (windows, seqlen)}; statistics: the dense statistics a ``dense`` propagation
    prunes from (None otherwise).
    """

    def __init__(self, loaded, spec: BudgetSpec, calib_ids, eval_ids: Mapping, statistics=None):
        self.loaded, self.spec, self.calib_ids, self.eval_ids, self.statistics = (loaded, spec, calib_ids, eval_ids,
                                                                                  statistics)
        self.method = get_method(spec.setting.method)
        self._inputs = None

    def run(self, task: BudgetPointTask, progress: ProgressFn) -> dict:
        """{"ppls" ({corpus: perplexity} on the task's corpora), "measured_sparsity", "prune_seconds",
        "eval_seconds"}; progress over [0.3, 1]: pruning to 0.7, then evaluation (the plan took [0, 0.3] on the
        driver)."""
        from pruning_core import evaluate
        from pruning_core.prune import prune_model, prune_with_statistics

        spec, config = self.spec, task.config
        prune_progress = sub_progress(progress, 0.3, 0.7)
        prune_progress(0.0, f"{task.label}: pruning")
        if self.method.needs == "none":
            pruned = prune_with_statistics(self.loaded, None, config)
        elif spec.setting.propagation == "dense":
            pruned = prune_with_statistics(self.loaded, self.statistics, config)
        else:
            if self._inputs is None:
                from pruning_core.walk import capture_layer_inputs

                self._inputs = capture_layer_inputs(self.loaded, self.calib_ids, spec.protocol.batch_size)
            pruned = prune_model(self.loaded, self.calib_ids, config, spec.protocol.batch_size, prune_progress,
                                 inputs=self._inputs)
        corpora = list(task.corpora or spec.eval_corpora)
        evaluation = evaluate.evaluate_setting(self.loaded, spec.protocol, corpora, pruned, dense=False,
                                               eval_ids=self.eval_ids, label=task.label,
                                               progress=sub_progress(progress, 0.7, 1.0))
        return {"ppls": {c: float(evaluation.pruned_ppl[c]) for c in corpora}, "measured_sparsity": pruned.sparsity,
                "prune_seconds": pruned.seconds, "eval_seconds": evaluation.seconds}


def build_budget_worker(spec: BudgetSpec, fingerprint: str, calib_ids, eval_ids: Mapping,
                        statistics=None) -> BudgetWorker:
    """A worker in another process (a Ray actor): loads `spec.model` itself and checks that its weights are the
    driver's (`fingerprint`), so every point is measured on the model the search is keyed by."""
    loaded = load_worker_model(spec.model, fingerprint, "this search prunes")
    return BudgetWorker(loaded, spec, calib_ids, eval_ids, statistics)


class _RealMeasure:
    """Prune with the allocator's plan at a global sparsity and measure perplexity, reusing the store.

    Work shared across steps: evaluation windows and calibration windows are read once, layer-0 inputs are
    captured once (pruned propagation), dense statistics are read once from the statistics cache (an allocator
    that reads them, dense propagation), so the plan adds at most one calibration pass to the whole search.
    """

    def __init__(self, loaded, spec: BudgetSpec, store, progress: ProgressFn, sensitivity: Optional[Mapping]):
        from pruning_core import evaluate
        from pruning_core.protocol import corpus_key

        self.loaded, self.spec, self.store, self.progress = loaded, spec, store, progress
        self.allocator = get_allocator(spec.setting.allocator_name)
        self.method = get_method(spec.setting.method)
        self.eval_ids = evaluate.evaluation_windows(loaded, spec.protocol, list(spec.eval_corpora))
        self.windows_by_corpus = {c: int(ids.shape[0]) for c, ids in self.eval_ids.items()}
        self.windows = min(self.windows_by_corpus.values())  # what every figure of the search rests on, at least
        self.calib_identity = corpus_key(spec.protocol.calib, "calibration", spec.protocol.calib_column)
        self.eval_identity = {c: corpus_key(c, "evaluation")["sha256"] for c in spec.eval_corpora}
        self._calib_ids = None
        self._statistics: dict[str, Any] = {}
        self.sensitivity = sensitivity
        if self.allocator.needs == "sensitivity" and self.sensitivity is None:
            self.sensitivity = load_sensitivity(spec.sensitivity, store, loaded, self.method.name)
        self.run_key = None
        if store is not None:
            from pruning_core.store import content_hash

            self.run_key = content_hash({"budget": spec.to_dict(), "model": loaded.fingerprint})
            store.put_run(self.run_key, "budget", spec.to_dict())

    # -------------------------------------------------------------------------------------- shared work

    def calib_ids(self):
        if self._calib_ids is None:
            from pruning_core.protocol import calibration_ids

            self._calib_ids = calibration_ids(self.loaded, self.spec.protocol)
        return self._calib_ids

    def statistics(self, need: str, progress: ProgressFn):
        """Dense statistics of kind `need` (from the store when there), read or computed once per search."""
        from pruning_core.methods import covers
        from pruning_core.statistics_cache import cached_statistics

        for have, value in self._statistics.items():
            if covers(have, need):
                return value
        value = cached_statistics(self.loaded, self.spec.protocol, need, self.store, self.calib_ids(), progress)
        self._statistics[need] = value
        return value

    def plan(self, sparsity: float, progress: ProgressFn):
        statistics = self.statistics("act_sq", progress) if self.allocator.needs == "act_sq" else None
        inputs = AllocationInputs(self.loaded, statistics=statistics, sensitivity=self.sensitivity,
                                  options=dict(self.spec.options))
        return make_plan(self.spec.setting.allocator_name, inputs, sparsity)

    # -------------------------------------------------------------------------------------- measuring

    def dense(self) -> dict[str, float]:
        from pruning_core import evaluate

        corpora = list(self.spec.eval_corpora)
        evaluation = evaluate.evaluate_setting(self.loaded, self.spec.protocol, corpora, None,
                                               eval_ids=self.eval_ids, store=self.store,
                                               progress=sub_progress(self.progress, 0.0, 0.02))
        self.dense_reused = all(c in evaluation.dense_cached for c in corpora)
        return {c: float(evaluation.dense_ppl[c]) for c in corpora}

    def point_key(self, config, corpus: Optional[str] = None) -> dict:
        """Everything that determines one measured step on `corpus` (default the budget's first; hash it with
        `store.content_hash`). One key per corpus, so a step measured by a one-corpus search serves a search on
        several, and the other way round."""
        from pruning_core.provenance import library_versions

        versions = library_versions()
        return {"kind": POINT_KIND, "model": self.loaded.fingerprint, "calib": self.calib_identity,
                "protocol": self.spec.protocol.to_dict(), "method": config.method, "structure": config.structure,
                "propagation": config.propagation, "calib_dtype": config.calib_dtype,
                "blocksize": config.blocksize, "percdamp": config.percdamp, "plan": config.plan.digest(),
                "corpus": self.eval_identity[corpus or self.spec.eval_corpus],
                "versions": {k: versions[k] for k in ("prunescope", "torch", "transformers")}}

    def prepare(self, sparsity: float, progress: ProgressFn) -> tuple[Optional[dict], Optional[BudgetPointTask]]:
        """(the stored point, None) when the store has it, else (None, the task that measures it). The plan is
        made here, on the driver, and so are the dense statistics a ``dense`` propagation prunes from."""
        spec = self.spec
        plan = self.plan(sparsity, sub_progress(progress, 0.0, 0.3))
        config = replace(spec.setting, sparsity=sparsity).prune_config().with_plan(self.loaded, plan)
        keys: dict[str, str] = {}
        known: dict[str, dict] = {}  # corpus -> the stored point measured on it
        if self.store is not None:
            from pruning_core.store import content_hash

            for corpus in spec.eval_corpora:
                keys[corpus] = content_hash(self.point_key(config, corpus))
                stored = self.store.get_result(keys[corpus])
                if stored is not None:
                    known[corpus] = stored
            if len(known) == len(spec.eval_corpora):
                for corpus, stored in known.items():  # link them to this run too
                    self.store.put_result(keys[corpus], POINT_KIND, stored, run_key=self.run_key)
                return {**self._merged(known), "reused": True}, None
        if self.method.needs != "none" and spec.setting.propagation == "dense":
            self.statistics(self.method.needs, sub_progress(progress, 0.3, 0.7))
        label = f"{spec.setting.method} {spec.setting.allocator_name} {sparsity:.0%}"
        todo = tuple(c for c in spec.eval_corpora if c not in known)
        return None, BudgetPointTask(sparsity, config, label, todo, keys,
                                     {c: float(p["ppl"]) for c, p in known.items()})

    def _merged(self, per_corpus: Mapping[str, dict]) -> dict:
        """One step from its stored points on each corpus: their perplexities ("ppls"), the rest from the first
        (the plan and measured sparsity are the same on every corpus), "windows" the fewest of them."""
        first = per_corpus[next(c for c in self.spec.eval_corpora if c in per_corpus)]
        merged = {k: v for k, v in first.items() if k != "ppl"}
        merged["ppls"] = {c: float(p["ppl"]) for c, p in per_corpus.items()}
        merged["windows"] = min(int(p.get("windows") or 0) for p in per_corpus.values()) or first.get("windows")
        return merged

    def _pruning_inputs(self) -> tuple[Any, Any]:
        """(calibration windows, dense statistics) the workers prune from: each only where a point needs it."""
        needs_data = self.method.needs != "none"
        calib_ids = self.calib_ids() if needs_data and self.spec.setting.propagation == "pruned" else None
        statistics = (self.statistics(self.method.needs, no_progress)
                      if needs_data and self.spec.setting.propagation == "dense" else None)
        return calib_ids, statistics

    def recipe(self) -> WorkerRecipe:
        """Workers that prune and evaluate points: in this process one worker kept for the whole search (its
        captured layer inputs serve every round), on Ray one per actor for the whole search (the executor's
        session), each loading `spec.model` once."""
        calib_ids, statistics = self._pruning_inputs()
        return WorkerRecipe(build=build_budget_worker,
                            args=(self.spec, self.loaded.fingerprint, calib_ids, self.eval_ids, statistics),
                            local=lambda: BudgetWorker(self.loaded, self.spec, calib_ids, self.eval_ids, statistics))

    def complete(self, task: BudgetPointTask, outcome: dict) -> dict:
        """The point of a finished task: one stored point per corpus it was evaluated on (under that corpus's
        key, as a one-corpus search stores it), merged with those the store already had."""
        plan = task.config.plan
        common = {"plan_sparsity": task.config.sparsity, "measured_sparsity": outcome["measured_sparsity"],
                  "plan_digest": plan.digest(), "allocator": plan.allocator,
                  "prune_seconds": outcome["prune_seconds"], "eval_seconds": outcome["eval_seconds"]}
        for corpus, ppl in outcome["ppls"].items():
            point = {"ppl": float(ppl), **common, "windows": self.windows_by_corpus[corpus]}
            if corpus in task.keys:
                self.store.put_result(task.keys[corpus], POINT_KIND, point, run_key=self.run_key)
        ppls = {**task.known, **outcome["ppls"]}
        return {**common, "windows": min(self.windows_by_corpus[c] for c in ppls),
                "ppls": {c: float(ppls[c]) for c in self.spec.eval_corpora}, "reused": False}

    def protocol(self) -> dict:
        from pruning_core import evaluate

        return evaluate.protocol_record(self.spec.protocol, self.eval_ids,
                                        propagation=self.spec.setting.propagation,
                                        calib_dtype=self._calib_dtype())

    def _calib_dtype(self) -> str:
        from pruning_core.prune import default_calib_dtype

        return default_calib_dtype(self.spec.setting.propagation, self.method.name)

    def finish(self, result: dict) -> None:
        result["model"] = self.loaded.describe()
        result["dense_reused"] = self.dense_reused
        if self.sensitivity is not None:  # which maps the plans read, so the answer can be traced
            result["sensitivity"] = {"source": self.sensitivity.get("source", "given"),
                                     "maps": [{k: m.get(k) for k in ("metric", "method", "sparsity")}
                                              for m in self.sensitivity.get("maps", [])]}
        if self.store is not None:
            from pruning_core.store import content_hash

            self.store.put_result(content_hash({"budget_result": self.run_key}), RESULT_KIND,
                                  {k: v for k, v in result.items() if k != "machine"}, run_key=self.run_key)


def load_sensitivity(path: Optional[str], store, loaded, method: str) -> Optional[dict]:
    """A sensitivity result {"maps": [...]} for the "sensitivity" allocator: from the JSON file `path` (what
    `prunescope sensitivity` writes), else the maps of this model and `method` over every layer in `store` (the
    newest of each metric and sparsity). None when there is none; `make_plan` then says how to compute one."""
    if path:
        import json
        from pathlib import Path

        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"Sensitivity file '{path}' does not exist; give the JSON `prunescope sensitivity` "
                              "wrote.")
        try:
            document = json.loads(file.read_text())
        except ValueError as exc:
            raise ConfigError(f"Sensitivity file '{path}' is not valid JSON ({exc}).") from None
        if isinstance(document, Mapping) and "maps" not in document and "values" in document:
            document = {"maps": [document]}  # a single map
        if not isinstance(document, Mapping) or not isinstance(document.get("maps"), list):
            raise ConfigError(f"Sensitivity file '{path}' has no 'maps' list; give the JSON `prunescope "
                              "sensitivity` wrote.")
        return {**document, "source": str(file)}
    if store is None:
        return None
    layers = len(loaded.adapter.decoder_layers(loaded.model))
    newest: dict[tuple[str, float], dict] = {}
    for document in store.results_of_kind("sensitivity_map"):
        if ((document.get("model") or {}).get("fingerprint") != loaded.fingerprint
                or document.get("method") != method or len(document.get("layers") or ()) != layers):
            continue  # another model or method, or a map of some layers only (the allocator needs every layer)
        newest[(str(document.get("metric")), float(document.get("sparsity", -1)))] = document
    if not newest:
        return None
    # Every metric is handed over; the allocator picks one measured at two or more sparsities (exact first).
    return {"maps": [newest[k] for k in sorted(newest)], "source": "store"}


def run_budget_job(spec: dict, store, progress: ProgressFn) -> dict:
    """Job entry (`jobs.JOB_KINDS["budget"]`): `spec` is `BudgetSpec.to_dict()`. Every measured step goes to
    `store` as it finishes, so a cancelled or killed job resumes without re-measuring. Returns the search result.

    Where the points are measured is the spec's `executor` (absent = this process): it changes no number, so
    it is in no key."""
    from pruning_core.models import load_model

    budget = BudgetSpec.from_dict(spec).validate()
    progress(0.0, f"loading the model ({budget.model})")
    executor = make_executor(budget.executor)  # a missing Ray fails here, before the model loads
    loaded = load_model(budget.model)
    return search_budget(loaded, budget, store=store, progress=progress, executor=executor)


__all__ = ["BudgetPointTask", "BudgetSpec", "BudgetWorker", "MeasureFn", "build_budget_worker",
           "load_sensitivity", "parse_fraction", "run_budget_job", "search_budget"]

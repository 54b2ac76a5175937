"""Executors: run independent units of work and hand back each result as it finishes.

A unit of work is a *task* (a picklable value) given to a *worker*: an object with `run(task, progress)`
that holds what every task needs and is expensive to make (a loaded model, calibration windows), so a worker
is made once and runs many tasks. `WorkerRecipe` says how to make one.

- `LocalExecutor` runs every task in this process, in order, on one worker: exactly what the library did
  before executors existed (the default; nothing to install).
- `RayExecutor` (`pruning_core.executors.ray_workers`, needs the optional `ray` extra) makes `workers`
  Ray actors, each building its own worker once, and runs the tasks on them in parallel, on this machine or
  on a Ray cluster.

The caller (the *driver*) keeps everything that must happen once: it owns the store, skips finished work,
writes each result as it arrives, and reports progress. Executors never touch the store. Results come in
finish order as (task index, result); the caller puts them back in its own order.

Use an executor's `run` inside `contextlib.closing(...)`: closing the generator (also when the caller's
progress callback raises to cancel) stops the work still running. A caller with several rounds of tasks (a
budget search) opens `executor.session(recipe)` once and calls its `run` per round: the workers, and the model
each holds, are made once for all rounds.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

from pruning_core.errors import ConfigError
from pruning_core.progress import ProgressFn, no_progress

EXECUTOR_KINDS = ("local", "ray")

#: Environment variables the command line takes its executor flags' defaults from (`ExecutorConfig.from_env`).
#: They decide where the work runs, never what it computes; a job carries its executor in its spec, outside
#: every key.
ENV_EXECUTOR = "PRUNESCOPE_EXECUTOR"
ENV_RAY_ADDRESS = "PRUNESCOPE_RAY_ADDRESS"
ENV_WORKERS = "PRUNESCOPE_WORKERS"


class Worker(Protocol):
    """Runs tasks; made once per process (or Ray actor) and reused for every task given to it."""

    def run(self, task: Any, progress: ProgressFn) -> Any: ...


@dataclass(frozen=True)
class WorkerRecipe:
    """How to make a worker.

    build(*args): makes a worker anywhere (a Ray actor calls it in its own process, so `build` must be a
    module-level function and `args` picklable; a Ray ObjectRef among `args` arrives as its value).
    local: optional in-process maker, e.g. one that wraps a model the driver already holds, so the local
    executor loads nothing twice; without it the local executor calls `build(*args)`.
    """

    build: Callable[..., Worker]
    args: tuple = ()
    local: Optional[Callable[[], Worker]] = None


def load_worker_model(source: str, fingerprint: str, work: str):
    """The model a worker in another process (a Ray actor) computes on: loaded from `source` and checked against
    the driver's weight `fingerprint`, so every result is computed on the model the driver keyed it by.
    work: what the driver runs, for the message ("this sweep runs on"). ConfigError when the weights differ."""
    from pruning_core.models import load_model  # a worker's own import: drivers of the local executor skip it

    loaded = load_model(source)
    if loaded.fingerprint != fingerprint:
        raise ConfigError(f"A worker loaded '{source}' but its weights differ from the model {work}; give a model "
                          "source every worker can load the same way (a folder or hub id present on every node), "
                          "or use --executor local.")
    return loaded


@dataclass(frozen=True)
class ExecutorConfig:
    """Where units of work run.

    kind: "local" (this process, the default) or "ray".
    address: Ray cluster address ("auto", "ray://host:10001", "host:6379"); None starts a local Ray on
    this machine with `workers` CPUs (and stops it afterwards).
    workers: Ray actors, each holding one copy of the model: memory grows with it, and on one machine more
    workers than cores only adds contention.
    cpus_per_task, gpus_per_task: Ray resources each actor reserves (fractions allowed); Ray also limits
    an actor's torch/OpenMP threads to its CPUs.
    """

    kind: str = "local"
    address: Optional[str] = None
    workers: int = 2
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0

    def validate(self) -> "ExecutorConfig":
        """Check every field; raises ConfigError naming the bad value and the fix."""
        if self.kind not in EXECUTOR_KINDS:
            raise ConfigError(f"Executor '{self.kind}' is unknown; use one of {', '.join(EXECUTOR_KINDS)}.")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"workers must be a whole number of at least 1, got {self.workers!r}.")
        if not self.cpus_per_task > 0:
            raise ConfigError(f"cpus_per_task must be above 0 (a Ray actor needs some CPU), got {self.cpus_per_task}.")
        if self.gpus_per_task < 0:
            raise ConfigError(f"gpus_per_task must be 0 or more, got {self.gpus_per_task}.")
        if self.address is not None and not str(self.address).strip():
            raise ConfigError("The Ray address is empty; give one (e.g. auto or ray://head:10001) or leave it out "
                              "to start Ray on this machine.")
        if self.kind == "local" and self.address is not None:
            raise ConfigError("A Ray address was given with the local executor; choose the Ray executor to use it "
                              f"(--executor ray, or {ENV_EXECUTOR}=ray for the command line).")
        return self

    def describe(self) -> str:
        """One phrase for progress messages and logs, e.g. "Ray, 2 workers (local cluster)"."""
        if self.kind == "local":
            return "local (this process)"
        return f"Ray, {self.workers} worker{'s' if self.workers != 1 else ''} ({self.address or 'local cluster'})"

    def to_dict(self) -> dict:
        """Plain JSON, as a job spec stores it (`spec.JobSpec.to_dict`)."""
        return {"kind": self.kind, "address": self.address, "workers": self.workers,
                "cpus_per_task": self.cpus_per_task, "gpus_per_task": self.gpus_per_task}

    @classmethod
    def from_dict(cls, d) -> "ExecutorConfig":
        """Inverse of `to_dict` (missing keys keep their defaults), validated; unknown keys raise ConfigError."""
        if isinstance(d, ExecutorConfig):
            return d.validate()
        known = ("kind", "address", "workers", "cpus_per_task", "gpus_per_task")
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"Unknown executor settings {unknown}; known: {', '.join(known)}.")
        return cls(**dict(d)).validate()

    @classmethod
    def from_env(cls, environ: Optional[dict] = None) -> "ExecutorConfig":
        """Settings from PRUNESCOPE_EXECUTOR / PRUNESCOPE_RAY_ADDRESS / PRUNESCOPE_WORKERS (unset: local).

        Only the command line reads them, as the defaults of its --executor/--ray-address/--workers flags
        (`cli.common`); a job reads its executor from its spec."""
        env = os.environ if environ is None else environ
        workers_text = env.get(ENV_WORKERS, "").strip()
        try:
            workers = int(workers_text) if workers_text else cls.workers
        except ValueError:
            raise ConfigError(f"{ENV_WORKERS}={workers_text!r} is not a whole number; set it to e.g. 2.") from None
        kind = env.get(ENV_EXECUTOR, "").strip().lower() or "local"
        address = env.get(ENV_RAY_ADDRESS, "").strip() or None
        return cls(kind=kind, address=address, workers=workers).validate()


@dataclass
class LocalExecutor:
    """Every task in this process, in the given order, on one worker: the library's behaviour without Ray."""

    config: ExecutorConfig = field(default_factory=ExecutorConfig)

    @contextlib.contextmanager
    def session(self, recipe: WorkerRecipe) -> Iterator["_LocalSession"]:
        """One worker, made at the first task, for several `run`s (the same interface as the Ray executor's)."""
        yield _LocalSession(recipe)

    def run(self, recipe: WorkerRecipe, tasks: Sequence[Any],
            progress_for: Optional[Callable[[int], ProgressFn]] = None,
            idle: Optional[Callable[[], None]] = None) -> Iterator[tuple[int, Any]]:
        """Yield (index, result) for every task, in order. progress_for(i): the progress callback task i
        reports to (its [0, 1] range); idle is not needed here (progress flows from inside the task)."""
        with self.session(recipe) as session:
            yield from session.run(tasks, progress_for, idle)


class _LocalSession:
    """The worker of a `LocalExecutor.session`, built when the first task arrives (no task, no model copy)."""

    def __init__(self, recipe: WorkerRecipe):
        self.recipe = recipe
        self.worker: Optional[Worker] = None

    def run(self, tasks: Sequence[Any], progress_for: Optional[Callable[[int], ProgressFn]] = None,
            idle: Optional[Callable[[], None]] = None) -> Iterator[tuple[int, Any]]:  # noqa: ARG002
        for index, task in enumerate(tasks):
            if self.worker is None:
                recipe = self.recipe
                self.worker = recipe.local() if recipe.local is not None else recipe.build(*recipe.args)
            yield index, self.worker.run(task, progress_for(index) if progress_for else no_progress)


def make_executor(config: Optional[ExecutorConfig] = None):
    """The executor for `config` (None = local). A Ray one fails here, with the install command, when Ray
    is not installed."""
    config = (config or ExecutorConfig()).validate()
    if config.kind == "local":
        return LocalExecutor(config)
    from pruning_core.executors.ray_workers import RayExecutor

    return RayExecutor(config)

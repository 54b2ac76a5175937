"""Ray executor: the same units of work as `LocalExecutor`, run in parallel on Ray actors.

Each actor builds one worker (`WorkerRecipe.build`, e.g. loading the model once) and runs one task at a
time; the driver keeps one task in flight per actor and hands the next task to whichever actor finishes
first, so slow points (SparseGPT) and quick ones (magnitude) balance out. Results come back through Ray's
object store; the driver alone writes them to the store.

Failures: actors are created with `max_restarts` / `max_task_retries`, so a worker process that dies
(killed, out of memory) is restarted, rebuilds its worker, and the task it held runs again; the driver sees
one result per task, never two. Stopping: closing the `run` generator (the caller's progress callback raised
to cancel, or any error) cancels the tasks in flight and kills the actors, so no Ray work outlives the call.

Ray is an optional extra and imported only here, only when a Ray executor runs: `pip install '.[ray]'`.
This module does not import `executors` (which imports it lazily in `make_executor`): settings and recipes
arrive as objects with the fields of `ExecutorConfig` and `WorkerRecipe`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

from pruning_core.errors import ConfigError, PruneScopeError
from pruning_core.progress import ProgressFn, no_progress

#: Restarts of a dead actor (and re-runs of the task it held) before the run gives up: enough for a worker
#: killed by hand or by a node going away, few enough that a task that always crashes its process stops.
MAX_RESTARTS = 3
#: Seconds between the driver's idle callbacks while every actor is busy: the job runner's cancel and
#: heartbeat are read there, so a cancel takes effect within about this long.
POLL_S = 1.0
#: Name prefix of the actors (with a per-run id), so a person can find them in `ray list actors`.
ACTOR_PREFIX = "prunescope-worker"

#: Ray's setting for its workers' niceness (it reads RAY_<name> from the environment of the node it starts).
WORKER_NICENESS_ENV = "RAY_worker_niceness"


def start_local_ray(ray, cpus: int, **options) -> None:
    """Start Ray on this machine with `cpus` CPUs (`ray.init` options passed on), its workers at this process's
    priority: Ray starts them at niceness 15, as background work, but here they are the run's compute, and at 15
    they starve whenever anything else uses the cores (a sweep on a busy machine crawled). A user's own
    RAY_worker_niceness is kept."""
    os.environ.setdefault(WORKER_NICENESS_ENV, "0")
    ray.init(num_cpus=cpus, **options)


def import_ray():
    """The `ray` module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("Ray is not installed: pip install '.[ray]' (or use --executor local)") from None
    return ray


class _ActorHost:
    """The body of one Ray actor: builds its worker once (again after a restart) and runs tasks on it."""

    def __init__(self, build: Callable[..., Any], *args: Any):
        self.worker = None
        self.error: Optional[PruneScopeError] = None
        try:
            self.worker = build(*args)
        except PruneScopeError as exc:
            # Raised again by `run`, so the driver gets the sentence itself; an error in the constructor
            # would instead read as a dead actor and be retried for nothing.
            self.error = exc
        self.ready_at = time.time()  # wall clock: the driver compares it with when it created this actor

    def run(self, task: Any) -> Any:
        if self.error is not None:
            raise self.error
        # Progress inside a task stays in the actor: the driver reports each task as it finishes.
        return self.worker.run(task, no_progress)

    def ready_time(self) -> float:
        return self.ready_at


@dataclass
class RayExecutor:
    """Run tasks on `config.workers` Ray actors (see the module docstring).

    config: an `executors.ExecutorConfig` (kind "ray"), validated by its maker (`executors.make_executor`).
    After a run: startup_seconds, the seconds spent starting or joining Ray before any actor (serial,
    driver-side); worker_start_seconds, per actor, seconds from its creation to its worker being built (process
    start, imports, model load; the actors start in parallel, but each pays it once however many tasks it
    runs; measured after a run that finished, by wall clock, so across machines it includes their clock skew).
    """

    config: Any
    startup_seconds: float = 0.0
    worker_start_seconds: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ray = import_ray()  # fail now, before any expensive work, when Ray is missing

    def _connect(self) -> bool:
        """Start (address None) or join Ray unless this process already is connected; True if started here."""
        ray = self._ray
        if ray.is_initialized():
            return False
        import logging

        options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                       configure_logging=True)
        try:
            if self.config.address is None:
                cpus = max(1, math.ceil(self.config.workers * self.config.cpus_per_task))
                start_local_ray(ray, cpus, **options)
            else:
                ray.init(address=self.config.address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.config.address or "this machine"
            raise ConfigError(f"Could not start or reach Ray at {where} ({str(exc).splitlines()[0]}); check the "
                              "address (e.g. auto, or ray://head:10001) or use --executor local.") from None
        return True

    def _check_resources(self) -> None:
        """Fail with a sentence, rather than wait forever, when no actor could ever be placed."""
        total = self._ray.cluster_resources()
        needs = {"CPU": self.config.cpus_per_task, "GPU": self.config.gpus_per_task}
        for resource, amount in needs.items():
            if amount > 0 and total.get(resource, 0.0) < amount:
                raise ConfigError(f"The Ray cluster has {total.get(resource, 0.0):g} {resource}(s) but each worker "
                                  f"asks for {amount:g}; lower the per-task {resource} request or add nodes.")

    @contextlib.contextmanager
    def session(self, recipe: Any) -> Iterator["_RaySession"]:
        """Ray connected and the workers of `recipe` kept alive for several `run`s (e.g. the rounds of a budget
        search): each actor builds its worker once per session, not once per run. On exit the actors end and a
        Ray started here stops."""
        ray = self._ray
        self.startup_seconds, self.worker_start_seconds = 0.0, []
        start = time.perf_counter()
        started_here = self._connect()
        session = None
        try:
            self._check_resources()
            self.startup_seconds = time.perf_counter() - start
            session = _RaySession(self, recipe)
            yield session
            # Measured only after work that finished: after a cancel the actors may already be gone.
            self.worker_start_seconds = session.start_times()
        finally:
            if session is not None:
                session.stop()
            if started_here:
                ray.shutdown()

    def run(self, recipe: Any, tasks: Sequence[Any],
            progress_for: Optional[Callable[[int], ProgressFn]] = None,
            idle: Optional[Callable[[], None]] = None) -> Iterator[tuple[int, Any]]:
        """Yield (index, result) for every task as it finishes (any order). idle() is called about every
        `POLL_S` seconds while waiting; it may raise (a cancel) to stop everything. One session per call."""
        if not tasks:
            return
        with self.session(recipe) as session:
            yield from session.run(tasks, progress_for, idle)

    def _result(self, ref) -> Any:
        """The task's value; a worker's own error comes back as itself, a dead worker as one sentence."""
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, PruneScopeError):
                raise cause from None
            raise
        except ray.exceptions.RayActorError as exc:
            raise PruneScopeError(f"A Ray worker stopped and could not be restarted ({str(exc).splitlines()[0]}); "
                                  "finished work is stored: run again to resume, with fewer workers if memory "
                                  "ran out.") from None

    def _stop(self, actors: list, in_flight: dict) -> None:
        """Cancel what is still running and end the actors (no restart): nothing keeps computing."""
        ray = self._ray
        for ref in in_flight:
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - already finished or its actor is gone: nothing to stop
                pass
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead
                pass


class _RaySession:
    """The actors of one `RayExecutor.session`: made as the first runs need them (at most `workers`), reused by
    later runs, ended by `stop`."""

    def __init__(self, executor: RayExecutor, recipe: Any):
        ray = executor._ray
        self.executor, self.ray = executor, ray
        self.host = ray.remote(_ActorHost)
        # Each argument goes into the object store once and every actor (and every restart) reads it from
        # there: large ones (calibration windows, statistics) are not copied per actor.
        self.build, self.shared = recipe.build, [ray.put(value) for value in recipe.args]
        self.run_id = uuid.uuid4().hex[:8]
        self.actors: list = []
        self.created_at: list[float] = []

    def _grow(self, wanted: int) -> None:
        config = self.executor.config
        while len(self.actors) < min(config.workers, wanted):
            self.created_at.append(time.time())
            self.actors.append(self.host.options(
                name=f"{ACTOR_PREFIX}-{self.run_id}-{len(self.actors)}", num_cpus=config.cpus_per_task,
                num_gpus=config.gpus_per_task, max_restarts=MAX_RESTARTS,
                max_task_retries=MAX_RESTARTS).remote(self.build, *self.shared))

    def run(self, tasks: Sequence[Any], progress_for: Optional[Callable[[int], ProgressFn]] = None,  # noqa: ARG002
            idle: Optional[Callable[[], None]] = None) -> Iterator[tuple[int, Any]]:
        """Yield (index, result) for every task as it finishes. The driver keeps one task in flight per actor and
        hands the next to whichever finishes first. Closing this generator early (a cancel, an error) cancels
        what is in flight and ends the actors that held it (the session makes new ones if it runs again)."""
        if not tasks:
            return
        ray = self.ray
        self._grow(len(tasks))
        in_flight: dict = {}  # ObjectRef -> (actor, task index)
        waiting = deque(range(len(tasks)))

        def submit(actor) -> None:
            if waiting:
                index = waiting.popleft()
                in_flight[actor.run.remote(tasks[index])] = (actor, index)

        try:
            for actor in self.actors:
                submit(actor)
            while in_flight:
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_S)
                if not ready:
                    if idle is not None:
                        idle()
                    continue
                actor, index = in_flight.pop(ready[0])
                result = self.executor._result(ready[0])
                submit(actor)  # before yielding: the actor works while the driver stores this result
                yield index, result
        finally:
            if in_flight:  # stopped early: nothing may keep computing for a run nobody reads
                busy = {id(actor) for actor, _ in in_flight.values()}
                self.executor._stop([a for a in self.actors if id(a) in busy], in_flight)
                kept = [(a, t) for a, t in zip(self.actors, self.created_at) if id(a) not in busy]
                self.actors, self.created_at = [a for a, _ in kept], [t for _, t in kept]

    def start_times(self) -> list[float]:
        """Seconds from creating each live actor to its worker being built (empty if one does not answer)."""
        ray = self.ray
        try:
            ready = ray.get([a.ready_time.remote() for a in self.actors], timeout=30)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            return []
        return [r - c for r, c in zip(ready, self.created_at)]

    def stop(self) -> None:
        self.executor._stop(self.actors, {})
        self.actors, self.created_at = [], []

"""Long work (sweeps, sensitivity maps) as jobs: run in a worker process, report progress, cancel, resume.

A job is a row in the store's `jobs` table plus a separate OS process (`python -m pruning_core.jobs.runner run ID`,
in its own session) that runs the job function. Because the process and the row outlive the web request, a
browser reload or a Streamlit rerun simply reads the row again. The design borrows from task queues like
RQ/Celery but needs no broker: SQLite is the queue, the progress channel and the result backend.

Contract of a job function (registered by import string in `JOB_KINDS`):

    fn(spec: dict, store: Store, progress: ProgressFn) -> dict

It stores each finished point in `store` as it goes and skips points already stored: that is what makes an
interrupted or cancelled job resume without recomputing. It calls `progress(fraction, message)` often
(at least every few seconds); that call writes progress to the store and raises `JobCancelled` when the user
asked to cancel, so cancellation takes effect at the next progress call.

States: queued -> running -> done | failed | cancelled | interrupted. `interrupted` is never written by the
worker itself (except on SIGTERM): it is how a reader reports a job whose worker vanished (killed, crashed,
machine restarted), detected by a dead pid or a heartbeat older than `STALE_AFTER_S`. Where this process started
the worker, its exit status tells the cause: a worker ended by SIGKILL (most often the kernel's out-of-memory
killer) is reported as "killed (out of memory?)" (`KILLED_ERROR`) as soon as it is reaped.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

from pruning_core.errors import ConfigError, JobCancelled, PruneScopeError
from pruning_core.devices.allocator import with_allocator_settings
from pruning_core.processes import process_exists
from pruning_core.progress import ProgressFn
from pruning_core.store import Store, content_hash

#: The job kinds, as "module:function" import strings resolved only when a job of that kind runs, so that
#: listing jobs never imports torch/transformers. Add a kind here; there is no other discovery.
JOB_KINDS: dict[str, str] = {
    "sweep": "pruning_core.analysis.sweep:run_sweep_job",
    "sensitivity": "pruning_core.analysis.refinement:run_sensitivity_job",
    "whatif": "pruning_core.analysis.whatif:run_whatif_job",
    "export": "pruning_core.export.pipeline:run_export_job",
    "budget": "pruning_core.allocation.budget:run_budget_job",
    "structured": "pruning_core.structured.run:run_structured_job",
    "quantize": "pruning_core.quantization.run:run_quantize_job",
    "point_export": "pruning_core.quantization.point_files:run_point_export_job",
    "frontier": "pruning_core.frontier.run:run_frontier_job",
    "recovery": "pruning_core.recovery.run:run_recovery_job",
    "continual": "pruning_core.continual.run:run_continual_job",
    "continual_adapters": "pruning_core.continual.adapters:run_continual_adapters_job",
    # Short jobs: work the dashboard would otherwise run in its own process (cached by spec like any job).
    "plan": "pruning_core.allocation.plan_job:run_plan_job",
    "throughput": "pruning_core.analysis.estimates:run_throughput_job",
    "generation": "pruning_core.analysis.whatif:run_generation_job",
    "selftest": "pruning_core.jobs.runner:_selftest_job",
}

ACTIVE_STATES = ("queued", "running")
TERMINAL_STATES = ("done", "failed", "cancelled", "interrupted")

#: Seconds between heartbeats written by the worker's monitor thread (independent of progress calls, so a
#: long step without progress does not look like a dead worker).
HEARTBEAT_INTERVAL_S = 2.0
#: A queued/running job with no sign of life (heartbeat, progress, submission) for this many seconds is
#: treated as interrupted even if its pid exists (the pid may have been reused by another process).
STALE_AFTER_S = 60.0
#: Progress is written to the store at most every this many seconds (about 2 writes/s); the last report
#: before the job ends is always written.
PROGRESS_WRITE_INTERVAL_S = 0.5
#: How often (seconds) the worker's monitor thread reads `cancel_requested`.
CANCEL_POLL_S = 0.25
#: If a worker's job has not reached a progress call this many seconds after a cancel request, the worker
#: records `cancelled` and exits hard. Stored points are committed rows, so nothing finished is lost.
CANCEL_GRACE_S = 20.0

_INTERRUPTED_ERROR = ("The worker process stopped without finishing (killed, crashed or the machine restarted); "
                      "submit the same job again to resume from its stored points.")

#: The error of a job whose worker was ended by SIGKILL: what the kernel's out-of-memory killer sends (or a user's
#: `kill -9`); the job runner can tell it from the worker's exit status when this process started the worker.
KILLED_ERROR = ("killed (out of memory?): the system ended the worker with SIGKILL, most often the kernel's "
                "out-of-memory killer; its finished points are kept in the store: submit the same job again to resume "
                "from them (in bf16 or with fewer calibration windows if memory ran out).")

# The exit status of each worker this process started, once it ended (negative: minus the signal that ended it),
# so that a job whose worker vanished is reported with its cause (`vanished_error`). Filled when a worker is
# reaped (its reaper thread, `_reap_children`); a worker another process started has no entry here.
_EXIT_STATUS: dict[str, int] = {}

# Worker processes started by this Python process, kept so they can be reaped (waited for) when they end;
# otherwise each finished worker would linger as a defunct (zombie) process whose pid still answers
# os.kill(pid, 0). Each has a reaper thread that waits for it (see `_spawn`); `_reap_children` also collects
# any that ended, on every status, list, submit and cancel.
_CHILDREN: dict[str, subprocess.Popen] = {}
_CHILDREN_LOCK = threading.Lock()


class _Terminated(BaseException):
    """Raised in a worker on SIGTERM, so the job is recorded as interrupted rather than vanishing."""


# ------------------------------------------------------------------------------------------------ helpers


def job_key(kind: str, spec: dict) -> str:
    """The content key of a job: equal kind and spec mean the same job (and the same cached result). The spec's
    "executor" (where it runs, `spec.JobSpec.to_dict`) is left out: it changes no number, so a job run on Ray
    and the same job run locally are one job, and a spec without one keys as before executors were stored."""
    spec = {k: v for k, v in spec.items() if k != "executor"} if isinstance(spec, dict) else spec
    try:
        return content_hash({"kind": kind, "spec": spec})
    except TypeError as exc:
        raise ConfigError(f"The {kind} job's settings must be plain JSON values: {exc}") from None


def _check_kind(kind: str) -> str:
    if kind not in JOB_KINDS:
        raise ConfigError(f"Unknown job kind {kind!r}; known kinds: {', '.join(sorted(JOB_KINDS))}.")
    return JOB_KINDS[kind]


def resolve_job_function(kind: str) -> Callable[[dict, Store, ProgressFn], dict]:
    """Import and return the function registered for `kind` in `JOB_KINDS`."""
    target = _check_kind(kind)
    module_name, _, func_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"Job kind {kind!r} needs module {module_name}, which is not available ({exc}).") from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ConfigError(f"Job kind {kind!r}: {module_name} has no function {func_name}.")
    return fn


def _one_line(exc: BaseException) -> str:
    """A short, single-line description of an error for the `error` column (the traceback goes to the log)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, PruneScopeError):  # our own messages are written for users already
        line = text or type(exc).__name__
    else:
        line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= 500 else line[:497] + "..."


def _reap_children() -> None:
    """Wait for every finished worker this process started (non-blocking: `poll` is waitpid(WNOHANG))."""
    with _CHILDREN_LOCK:
        for job_id, proc in list(_CHILDREN.items()):
            if proc.poll() is not None:
                _EXIT_STATUS[job_id] = proc.returncode
                del _CHILDREN[job_id]


def _reap_when_done(job_id: str, proc: subprocess.Popen) -> None:
    """Body of a worker's reaper thread: wait for the worker to exit, then forget it.

    A thread, not a SIGCHLD handler: Streamlit runs page scripts outside the main thread, where Python cannot
    install signal handlers, and a handler that waits for any child would steal other libraries' children.
    """
    proc.wait()
    with _CHILDREN_LOCK:
        _EXIT_STATUS[job_id] = proc.returncode
        if _CHILDREN.get(job_id) is proc:
            del _CHILDREN[job_id]


def vanished_error(job_id: str) -> str:
    """The error recorded for a job whose worker ended without recording how the job ended: `KILLED_ERROR` for
    SIGKILL, the signal's name for another signal, else (an exit status this process never saw: another process
    started the worker, or the machine restarted) the general `_INTERRUPTED_ERROR`."""
    status = _EXIT_STATUS.get(job_id)
    if status == -signal.SIGKILL:
        return KILLED_ERROR
    if status is not None and status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return (f"The worker was ended by {name} before it finished; its finished points are kept in the store: "
                "submit the same job again to resume from them.")
    return _INTERRUPTED_ERROR


def _record_vanished(store: Store, job_id: str) -> None:
    """Record a job whose worker has ended while its row still says queued/running as interrupted, with the
    cause its exit status tells (`vanished_error`); a worker that recorded its own end is left as it is. A reader
    that saw the pid gone first wrote the general `_INTERRUPTED_ERROR`: the cause replaces it."""
    now = time.time()
    error = vanished_error(job_id)
    if store.update_job(job_id, only_if_state=ACTIVE_STATES, state="interrupted", finished=now, updated=now,
                        eta_seconds=None, error=error) or error == _INTERRUPTED_ERROR:
        return
    job = store.get_job(job_id)
    if job is not None and job["state"] == "interrupted" and job.get("error") == _INTERRUPTED_ERROR:
        store.update_job(job_id, only_if_state=("interrupted",), error=error)


def _collect_exit_status(job_id: str, timeout_s: float = 2.0) -> None:
    """Wait up to `timeout_s` for a worker this process started to be reaped, so its exit status is known before
    a reader records why its job ended (the reaper thread may have just waited for it)."""
    with _CHILDREN_LOCK:
        proc = _CHILDREN.get(job_id)
    if proc is None:
        return
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return
    with _CHILDREN_LOCK:
        _EXIT_STATUS[job_id] = proc.returncode


def _reap_and_record(store: Store, job_id: str, proc: subprocess.Popen) -> None:
    """Body of a worker's reaper thread: reap it (`_reap_when_done`), then record a job it left unfinished
    (killed by the system: the job's row would otherwise say "running" until its heartbeat went stale)."""
    _reap_when_done(job_id, proc)
    if proc.returncode is None:
        return
    try:
        _record_vanished(store, job_id)
    except Exception as exc:  # noqa: BLE001 - a reader records it later (`JobRunner._annotate`), more generally
        print(f"job reaper: {exc}", file=sys.stderr)


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine and is not a zombie (this process's dead workers reaped
    first)."""
    _reap_children()
    return process_exists(pid)


def _worker_alive(job: dict, now: Optional[float] = None) -> bool:
    """Whether an active (queued/running) job still has a worker: a live pid and a recent sign of life."""
    now = time.time() if now is None else now
    last_sign = max(t for t in (job.get("heartbeat"), job.get("updated"), job.get("created")) if t is not None)
    if now - last_sign > STALE_AFTER_S:
        return False
    if job.get("pid") is None:
        return True  # its worker is being spawned right now; a spawner that died is caught by staleness
    if job.get("host") and job["host"] != socket.gethostname():
        return True  # a pid on another machine cannot be checked from here: trust the heartbeat
    return _pid_alive(int(job["pid"]))


def _append_log(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text if text.endswith("\n") else text + "\n")


# ------------------------------------------------------------------------------------------ the execution


class _Monitor:
    """A daemon thread beside the job: writes heartbeats and turns a cancel request into an event.

    Reading `cancel_requested` here (a few times a second) keeps the progress callback cheap: it only checks
    an in-memory event, so job functions may call it in inner loops.
    """

    def __init__(self, store: Store, job_id: str, hard_exit: bool):
        self.store, self.job_id, self.hard_exit = store, job_id, hard_exit
        self.writer: Optional["_ProgressWriter"] = None  # set by execute_job; its held-back report is flushed here
        self.cancel_event = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"prunescope-job-{job_id[:8]}", daemon=True)

    def __enter__(self) -> "_Monitor":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        last_beat = time.time()
        cancel_seen: Optional[float] = None
        while not self._stop.wait(CANCEL_POLL_S):
            now = time.time()
            try:
                rows = self.store.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (self.job_id,))
                if rows and rows[0]["cancel_requested"]:
                    self.cancel_event.set()
                    cancel_seen = cancel_seen or now
                if self.writer is not None:
                    self.writer.flush_pending(now)
                if now - last_beat >= HEARTBEAT_INTERVAL_S:
                    self.store.update_job(self.job_id, only_if_state=("running",), heartbeat=now)
                    last_beat = now
            except Exception as exc:  # noqa: BLE001 - a transient DB error must not kill the heartbeat thread
                print(f"job monitor: {exc}", file=sys.stderr)
            if self.hard_exit and cancel_seen is not None and now - cancel_seen > CANCEL_GRACE_S:
                # The job function has not called progress since the request; stop anyway. Only in a worker
                # process (never inline, where os._exit would kill the caller).
                self.store.update_job(self.job_id, only_if_state=("running",), state="cancelled", finished=now,
                                      updated=now, message="cancelled (forced: no progress call within "
                                      f"{CANCEL_GRACE_S:.0f} s)")
                os._exit(3)


class _ProgressWriter:
    """The progress callback handed to a job function: throttled writes, ETA, cancellation."""

    def __init__(self, store: Store, job_id: str, monitor: _Monitor, forward: Optional[ProgressFn]):
        self.store, self.job_id, self.monitor, self.forward = store, job_id, monitor, forward
        self.started = time.time()
        self.last_write = 0.0
        self.fraction, self.message, self.eta = 0.0, "", None
        # A report held back by the throttle; the monitor thread writes it once the interval has passed, so
        # a step that starts just after another report (and then runs silently for a minute) is still shown,
        # instead of the previous step's last message ("evaluating 4/4").
        self.pending = False
        self._lock = threading.Lock()  # a job may report from several threads

    def __call__(self, fraction: float, message: str) -> None:
        if self.monitor.cancel_event.is_set():
            raise JobCancelled("Cancelled by the user; the points finished so far are kept.")
        fraction = min(max(float(fraction), 0.0), 1.0)
        now = time.time()
        with self._lock:
            self.fraction, self.message = fraction, str(message)
            # Remaining time from the average rate so far (seconds). On resume, skipped points make the
            # first estimates optimistic; the rate settles as real points finish.
            self.eta = (now - self.started) * (1.0 - fraction) / fraction if fraction > 0 else None
            if now - self.last_write >= PROGRESS_WRITE_INTERVAL_S or fraction >= 1.0:
                self._write(now)
            else:
                self.pending = True
        if self.forward is not None:
            self.forward(fraction, message)

    def _write(self, now: float) -> None:
        self.store.update_job(self.job_id, only_if_state=("running",), fraction=self.fraction,
                              message=self.message, eta_seconds=self.eta, updated=now, heartbeat=now)
        self.last_write = now
        self.pending = False

    def flush_pending(self, now: float) -> None:
        """Write the latest report if the throttle held it back and the write interval has passed."""
        with self._lock:
            if self.pending and now - self.last_write >= PROGRESS_WRITE_INTERVAL_S:
                self._write(now)

    def final_fields(self) -> dict:
        """The last reported progress, for the row that records how the job ended."""
        return {"fraction": self.fraction, "message": self.message}


def execute_job(store: Store, job_id: str, progress: Optional[ProgressFn] = None, *,
                in_worker: bool = False) -> dict:
    """Run the queued job `job_id` in this process with full bookkeeping; return its result dict.

    Claims the job (queued -> running), runs its function with a progress callback that writes progress and
    heartbeats, and records the outcome: done (with result), cancelled, failed (one-line error, traceback in
    the job's log file) or, on SIGTERM, interrupted. Exceptions are re-raised after being recorded.
    """
    now = time.time()
    with store.transaction() as conn:
        job = store.get_job(job_id, conn)
        if job is None:
            raise ConfigError(f"No job {job_id!r} in the store {store.path}.")
        if job["state"] != "queued":
            raise PruneScopeError(f"Job {job_id} is {job['state']}, not queued; it is not started twice.")
        cancelled_early = bool(job["cancel_requested"])
        if cancelled_early:
            store.update_job(job_id, conn=conn, state="cancelled", finished=now, updated=now,
                             message="cancelled before it started")
        else:
            store.update_job(job_id, conn=conn, state="running", started=now, updated=now, heartbeat=now,
                             pid=os.getpid(), host=socket.gethostname(), message="starting")
    if cancelled_early:  # raised outside the transaction, which would otherwise roll the update back
        raise JobCancelled("Cancelled before it started.")
    log_path = job_log_path(store, job_id)
    _append_log(log_path, f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {job['kind']} job {job_id} started "
                          f"(pid {os.getpid()})")

    ended = ("running", "interrupted")  # a worker that ends after being presumed dead still records its end
    with _Monitor(store, job_id, hard_exit=in_worker) as monitor:
        writer = _ProgressWriter(store, job_id, monitor, progress)
        monitor.writer = writer
        try:
            fn = resolve_job_function(job["kind"])
            result = fn(job["spec"], store, writer)
            if not isinstance(result, dict):
                raise TypeError(f"job function for {job['kind']!r} returned {type(result).__name__}, not a dict")
        except JobCancelled:
            t = time.time()
            store.update_job(job_id, only_if_state=ended, state="cancelled", finished=t, updated=t,
                             eta_seconds=None, **{**writer.final_fields(), "message": "cancelled"})
            _append_log(log_path, "cancelled")
            raise
        except KeyboardInterrupt:  # Ctrl-C on an inline (CLI) run: the user stopped it on purpose
            t = time.time()
            store.update_job(job_id, only_if_state=ended, state="cancelled", finished=t, updated=t,
                             eta_seconds=None, **{**writer.final_fields(), "message": "cancelled (interrupt)"})
            raise
        except _Terminated:
            t = time.time()
            store.update_job(job_id, only_if_state=ended, state="interrupted", finished=t, updated=t,
                             eta_seconds=None, error="The worker was terminated (SIGTERM); submit again to resume.",
                             **writer.final_fields())
            raise
        except BaseException as exc:
            t = time.time()
            store.update_job(job_id, only_if_state=ended, state="failed", finished=t, updated=t, eta_seconds=None,
                             error=_one_line(exc), **writer.final_fields())
            _append_log(log_path, traceback.format_exc())
            raise
        t = time.time()
        store.update_job(job_id, only_if_state=ended, state="done", fraction=1.0, message="done", eta_seconds=0.0,
                         finished=t, updated=t, heartbeat=t, result=result, error=None)
    _append_log(log_path, f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] done")
    return result


def job_log_path(store: Store, job_id: str) -> Path:
    """The log file of a job (worker stdout/stderr and tracebacks), beside the store."""
    return store.logs_dir / f"job-{job_id}.log"


# ------------------------------------------------------------------------------------------------- runner


def worker_environment(store_path: Path | str) -> dict[str, str]:
    """The environment of a job's worker process: this one's, the store, this package, the allocator settings."""
    env = with_allocator_settings(os.environ)  # glibc reads them at the worker's start (devices/allocator.py)
    env["PRUNESCOPE_STORE"] = str(store_path)
    # The worker must import this very package even when it is not installed (a source checkout).
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


class JobRunner:
    """Submit, watch, cancel and list jobs; each submitted job runs in its own worker process.

    Stateless apart from the store (and the handles of workers it spawned, kept only to reap them), so any
    number of runners in any number of processes (Streamlit reruns, the CLI) see the same jobs.
    """

    def __init__(self, store: Optional[Store] = None):
        self.store = store if store is not None else Store()

    # ------------------------------------------------------------------------------------------ submit

    def _claim(self, kind: str, spec: dict, pid: Optional[int]) -> tuple[str, Optional[dict]]:
        """Find a live or finished job with the same key, or create a queued one; atomic across processes.

        Returns `(job_id, existing)`: `existing` is the job row to attach to (running, or done = cached), or
        None when a new row was created (with `pid` if given, else to be filled in by the spawner).
        """
        _check_kind(kind)
        key = job_key(kind, spec)
        now = time.time()
        with self.store.transaction() as conn:
            for job in self.store.jobs_with_key(key, conn):
                if job["state"] == "done":
                    return job["id"], job
                if job["state"] in ACTIVE_STATES:
                    if _worker_alive(job, now):
                        return job["id"], job
                    self.store.update_job(job["id"], conn=conn, only_if_state=ACTIVE_STATES, state="interrupted",
                                          finished=now, updated=now, error=vanished_error(job["id"]))
            job_id = uuid.uuid4().hex
            self.store.insert_job({
                "id": job_id, "key": key, "kind": kind, "spec": spec, "state": "queued", "fraction": 0.0,
                "message": "queued", "created": now, "updated": now, "pid": pid,
                "host": socket.gethostname(), "cancel_requested": 0,
            }, conn=conn)
        return job_id, None

    def submit(self, kind: str, spec: dict) -> str:
        """Start a job of `kind` with `spec` in a new worker process and return its id at once.

        No duplicates: if the same job (same kind and spec) is queued or running with a live worker, or has
        finished successfully, that job's id is returned instead (attach / cached result). After a failed,
        cancelled or interrupted attempt a new job starts; the job function skips the points already stored.
        Raises `ConfigError` for an unknown kind or a spec that is not plain JSON.
        """
        module_name = _check_kind(kind).partition(":")[0]
        if importlib.util.find_spec(module_name) is None:  # fail here, not in a log nobody reads
            raise ConfigError(f"Job kind {kind!r} needs module {module_name}, which is not available.")
        job_id, existing = self._claim(kind, spec, pid=None)
        if existing is not None:
            return job_id
        self._spawn(job_id)
        return job_id

    def _spawn(self, job_id: str) -> None:
        log_path = job_log_path(self.store, job_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = worker_environment(self.store.path)
        try:
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "pruning_core.jobs.runner", "run", job_id],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                    # Own session: the worker survives the Streamlit script being stopped or the server's
                    # process group being signalled, and can be stopped as a group.
                    start_new_session=True, close_fds=True,
                )
        except OSError as exc:
            now = time.time()
            self.store.update_job(job_id, only_if_state=ACTIVE_STATES, state="failed", finished=now,
                                  updated=now, error=f"Could not start a worker process: {exc}")
            raise PruneScopeError(f"Could not start a worker process for job {job_id}: {exc}") from None
        with _CHILDREN_LOCK:
            _CHILDREN[job_id] = proc
        threading.Thread(target=_reap_and_record, args=(self.store, job_id, proc),
                         name=f"prunescope-reap-{job_id[:8]}", daemon=True).start()
        self.store.update_job(job_id, only_if_state=ACTIVE_STATES, pid=proc.pid, updated=time.time())

    # ---------------------------------------------------------------------------------------- watching

    def status(self, job_id: str) -> dict:
        """All columns of the job, plus `alive` (a worker is on it) and `log_path`.

        A queued/running job whose worker is gone is recorded as `interrupted` here, by whoever looks first.
        """
        _reap_children()
        job = self.store.get_job(job_id)
        if job is None:
            raise ConfigError(f"No job {job_id!r} in the store {self.store.path}.")
        return self._annotate(job)

    def _annotate(self, job: dict) -> dict:
        alive = job["state"] in ACTIVE_STATES and _worker_alive(job)
        if job["state"] in ACTIVE_STATES and not alive:
            _collect_exit_status(job["id"])
            now = time.time()
            self.store.update_job(job["id"], only_if_state=(job["state"],), state="interrupted", finished=now,
                                  updated=now, eta_seconds=None, error=vanished_error(job["id"]))
            job = self.store.get_job(job["id"]) or job
            alive = job["state"] in ACTIVE_STATES and _worker_alive(job)  # it may have just finished instead
        job["alive"] = alive
        job["log_path"] = str(job_log_path(self.store, job["id"]))
        return job

    def list_jobs(self, limit: int = 50) -> list[dict]:
        """The `limit` most recent jobs, newest first, as `status` dicts."""
        _reap_children()
        return [self._annotate(job) for job in self.store.recent_jobs(limit)]

    def wait(self, job_id: str, timeout: Optional[float] = None, poll_s: float = 0.1) -> dict:
        """Block until the job ends (done/failed/cancelled/interrupted) or `timeout` seconds pass; return its status.

        On timeout the current status is returned (state still active): check `state`, nothing is raised.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if status["state"] in TERMINAL_STATES:
                with _CHILDREN_LOCK:
                    proc = _CHILDREN.get(job_id)
                if proc is not None:  # reap promptly; it exits right after writing its final row
                    try:
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        pass  # its reaper thread waits for it
                    _reap_children()
                return status
            if deadline is not None and time.monotonic() >= deadline:
                return status
            time.sleep(poll_s)

    def cancel(self, job_id: str) -> dict:
        """Ask the job to stop; return its status. A running worker stops at its next progress call.

        A queued or running job whose worker is already gone is marked cancelled at once; finished jobs are
        left as they are.
        """
        now = time.time()
        with self.store.transaction() as conn:
            job = self.store.get_job(job_id, conn)
            if job is None:
                raise ConfigError(f"No job {job_id!r} in the store {self.store.path}.")
            if job["state"] in ACTIVE_STATES:
                if _worker_alive(job, now):
                    self.store.update_job(job_id, conn=conn, cancel_requested=1, updated=now,
                                          message="cancelling...")
                else:
                    self.store.update_job(job_id, conn=conn, state="cancelled", cancel_requested=1,
                                          finished=now, updated=now, eta_seconds=None, message="cancelled")
        return self.status(job_id)

    # ------------------------------------------------------------------------------------------ inline

    def run_inline(self, kind: str, spec: dict, progress: Optional[ProgressFn] = None) -> dict:
        """Run a job in this process (CLI, tests) with the same bookkeeping as a worker; return its result.

        Same duplicate rules as `submit`: a done job's stored result is returned at once; a job running in a
        worker is waited for (its progress relayed to `progress`). Raises `JobCancelled` if cancelled, and the
        job's own exception if it fails (recorded as failed first).
        """
        job_id, existing = self._claim(kind, spec, pid=os.getpid())
        if existing is None:
            return execute_job(self.store, job_id, progress)
        if existing["state"] == "done":
            if progress is not None:
                progress(1.0, "done (stored result)")
            return existing["result"]
        # Attached to a job another process is running: relay its progress until it ends.
        while True:
            status = self.wait(job_id, timeout=0.5)
            if progress is not None:
                progress(status["fraction"], status["message"])
            if status["state"] == "done":
                return status["result"]
            if status["state"] == "cancelled":
                raise JobCancelled(f"Job {job_id} was cancelled.")
            if status["state"] == "failed":
                raise PruneScopeError(f"Job {job_id} failed: {status['error']}")
            if status["state"] == "interrupted":
                return self.run_inline(kind, spec, progress)  # its worker died: carry on here, resuming


# ------------------------------------------------------------------------------------------ built-in jobs


def _selftest_job(spec: dict, store: Store, progress: ProgressFn) -> dict:
    """A small real job for tests and smoke checks: `steps` points, each taking `sleep` seconds.

    spec: `name` (groups the points), `steps` (int), `sleep` (seconds per point, default 0.1), optional
    `fail_at` (raise at that step, before storing it). Point i is `{"i", "value": i*i, "computed_at", "pid"}`
    (computed_at in unix seconds) under `content_hash({"selftest": name, "i": i})`, linked to the run
    `content_hash({"selftest": name})`; stored points are skipped, which is how a rerun resumes.
    """
    name, steps = str(spec["name"]), int(spec["steps"])
    sleep_s = float(spec.get("sleep", 0.1))
    fail_at = spec.get("fail_at")
    run_key = content_hash({"selftest": name})
    store.put_run(run_key, "selftest", {"name": name, "steps": steps})
    computed = skipped = 0
    for i in range(steps):
        key = content_hash({"selftest": name, "i": i})
        if store.has_result(key):
            skipped += 1
        else:
            if fail_at is not None and i == int(fail_at):
                raise RuntimeError(f"selftest step {i} failed on purpose (fail_at={fail_at}).\n"
                                   "This second line checks that stored errors are one line.")
            time.sleep(sleep_s)
            store.put_result(key, "selftest_point",
                             {"i": i, "value": i * i, "computed_at": time.time(), "pid": os.getpid()},
                             run_key=run_key)
            computed += 1
        progress((i + 1) / steps, f"step {i + 1}/{steps}")
    return {"points": steps, "computed": computed, "skipped": skipped, "run_key": run_key}


# ------------------------------------------------------------------------------------------------- worker


def main(argv: Optional[list[str]] = None) -> int:
    """Worker entry point: `python -m pruning_core.jobs.runner run JOB_ID` (store from `$PRUNESCOPE_STORE`)."""
    parser = argparse.ArgumentParser(prog="python -m pruning_core.jobs.runner", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one queued job (the job runner starts this; not for direct use)")
    run.add_argument("job_id")
    args = parser.parse_args(argv)

    def on_sigterm(signum: int, frame: Any) -> None:  # noqa: ARG001
        raise _Terminated()

    signal.signal(signal.SIGTERM, on_sigterm)
    store = Store(os.environ.get("PRUNESCOPE_STORE") or None)
    try:
        execute_job(store, args.job_id, in_worker=True)
    except JobCancelled:
        return 0
    except _Terminated:
        return 143
    except BaseException as exc:  # noqa: BLE001 - already recorded in the jobs row and the log
        print(f"job {args.job_id} failed: {_one_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Run through the importable module, not __main__, so JOB_KINDS' "pruning_core.jobs.runner:..." entries and this
    # entry point share one copy of the module (one _Terminated class, one registry).
    from pruning_core.jobs.runner import main as _main

    sys.exit(_main())

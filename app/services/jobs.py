"""The job client: submit, follow and cancel jobs, read finished results, and estimate a job before it runs.

Long work (sweeps, maps, what-ifs, ...) is a job of `pruning_core.jobs.runner.JobRunner`, run in a worker
process that survives page reloads. With ``PRUNESCOPE_INLINE_JOBS=1`` (AppTest only) jobs run inline in the
script run, so tests are deterministic; the real app always uses workers.
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import streamlit as st

from app.services.models import get_model, model_identity
from pruning_core.analysis import estimates as _estimates
from pruning_core.errors import PruneScopeError
from pruning_core.jobs.estimates import ESTIMATED_KINDS, MEMORY_ONLY_KINDS, estimate_job
from pruning_core.jobs.memory_check import MemoryRefused, check_fits, check_job_fits
from pruning_core.protocol import Protocol
from pruning_core.jobs.runner import ACTIVE_STATES, JobRunner, job_key
from pruning_core.store import Store, home_dir
from pruning_core.stored_results import finished_counts as stored_finished_counts, finished_results

INLINE_ENV = "PRUNESCOPE_INLINE_JOBS"


class ServiceError(PruneScopeError):
    """A problem the dashboard reports as a short message (a job that failed, a missing engine part)."""


def inline_jobs() -> bool:
    """Whether jobs run inside the script run (tests) instead of worker processes (the real app)."""
    return os.environ.get(INLINE_ENV, "") == "1"


def _runner() -> JobRunner:
    # The store is cheap to open (one SQLite file under $PRUNESCOPE_HOME); not cached, so a test that changes
    # PRUNESCOPE_HOME gets its own store.
    return JobRunner(Store())


def _newest_id(jobs: list[dict]) -> str:
    """The id of the most recently created of `jobs` (rows of one job key)."""
    return max(jobs, key=lambda j: j.get("created") or 0)["id"]


def _retire_if_stale(runner: JobRunner, kind: str, spec: dict) -> None:
    """A finished job computed before the model file changed must not be reused: mark it failed (stale)."""
    try:
        identity = model_identity(spec["model"])
    except PruneScopeError:
        return
    mtime_ns = identity.get("mtime_ns")
    if not mtime_ns:
        return
    for job in runner.store.jobs_with_key(job_key(kind, spec)):
        if job["state"] == "done" and (job.get("created") or 0) * 1e9 < mtime_ns:
            runner.store.update_job(job["id"], only_if_state=("done",), state="failed",
                                    error="The model changed on disk after this result was computed.")


def submit_job(kind: str, spec: dict) -> str:
    """Start (or attach to, or reuse the finished) job of `kind` with `spec`; return its id.

    Inline mode (tests) runs it to the end before returning; a failure is then recorded in the job row and
    shown by the job panel like a worker's failure.
    """
    runner = _runner()
    _retire_if_stale(runner, kind, spec)
    _refuse_if_it_cannot_fit(runner, kind, spec)
    if not inline_jobs():
        return runner.submit(kind, spec)
    try:
        runner.run_inline(kind, spec)
    except PruneScopeError:
        pass  # recorded as failed/cancelled in the job row; the panel shows it
    except Exception:  # noqa: BLE001 - recorded in the row and its log; never a traceback on the page
        pass
    jobs = runner.store.jobs_with_key(job_key(kind, spec))
    if not jobs:
        raise ServiceError(f"The {kind} job did not start; try again.")
    return _newest_id(jobs)


def _refuse_if_it_cannot_fit(runner: JobRunner, kind: str, spec: dict) -> None:
    """Raise `MemoryRefused` (one sentence, shown by the page's error box) before a job starts whose estimated
    peak memory exceeds what this machine has free (`jobs.memory_check.check_job_fits`); a job already running or
    done is attached to, not started, so it is never refused. The worker is a new process: its memory is what
    the machine has free (inline test runs count this process's too)."""
    if kind not in (*ESTIMATED_KINDS, *MEMORY_ONLY_KINDS) or not spec.get("model"):
        return
    if any(job["state"] in (*ACTIVE_STATES, "done") for job in runner.store.jobs_with_key(job_key(kind, spec))):
        return
    check_job_fits(kind, spec, get_model(spec["model"]), runner.store, in_process=inline_jobs(), where="dashboard")


def memory_refusal(kind: str, estimate_: Optional[dict], spec: dict) -> Optional[str]:
    """The sentence a run with this estimate would be refused with at submission (`jobs.memory_check.check_fits`,
    the same check `submit_job` makes), so the estimate line can say it before the click; None when it fits."""
    try:
        check_fits(kind, estimate_, in_process=inline_jobs(), spec=spec, where="dashboard")
    except MemoryRefused as refused:
        return str(refused)
    return None


def job_status(job_id: str) -> dict:
    """The job's status dict (state, fraction, message, eta_seconds, error, result, spec, kind...)."""
    return _runner().status(job_id)


def cancel_job(job_id: str) -> dict:
    """Ask a job to stop at its next progress call; finished points stay stored."""
    return _runner().cancel(job_id)


def latest_job(kind: str, spec: Optional[dict] = None, model: Optional[str] = None) -> Optional[str]:
    """The newest job of `kind` worth showing after a reload: the same spec's if one exists, else the newest
    running or done job of that kind (of the model source `model`, if given); None when there is none."""
    runner = _runner()
    if spec is not None:
        try:
            same = runner.store.jobs_with_key(job_key(kind, spec))
        except PruneScopeError:
            same = []
        if same:
            return _newest_id(same)
    for job in runner.list_jobs(limit=50):
        if model is not None and (job.get("spec") or {}).get("model") != model:
            continue
        if job["kind"] == kind and job["state"] in (*ACTIVE_STATES, "done"):
            return job["id"]
    return None


def same_job(status: dict, spec: Optional[dict]) -> bool:
    """Whether the job `status` describes is the one `spec` (a page's current choices) would run."""
    if spec is None or not status.get("key"):
        return False
    try:
        return status["key"] == job_key(status["kind"], spec)
    except PruneScopeError:
        return False


def is_active(status: dict) -> bool:
    return status.get("state") in ACTIVE_STATES


def newest_status(kind: str, spec: dict) -> Optional[dict]:
    """The status (`job_status`) of the newest job of exactly `spec`, or None when it was never asked for."""
    runner = _runner()
    jobs = runner.store.jobs_with_key(job_key(kind, spec))
    if not jobs:
        return None
    return runner.status(_newest_id(jobs))


def recent_results(kind: str, model: Optional[str] = None, limit: int = 20) -> list[dict]:
    """Finished job results of `kind` (for the model source `model` if given), newest first:
    [{"id", "spec", "result", "finished"}] (`pruning_core.stored_results.finished_results`)."""
    return finished_results(Store(), kind, model, limit)


def finished_counts(model: Optional[str] = None) -> dict[str, int]:
    """{kind: finished results} of the model source `model` (`pruning_core.stored_results.finished_counts`)."""
    return stored_finished_counts(Store(), model)


def latest_result(kind: str, model: str) -> Optional[dict]:
    """The newest finished result of `kind` for the model source `model`, or None when it has none."""
    found = recent_results(kind, model, limit=1)
    return found[0]["result"] if found else None


@st.cache_data(show_spinner=False, max_entries=128)
def _estimate(kind: str, spec_json: str, identity_json: str, home: str,  # noqa: ARG001
              store_written: float) -> Optional[dict]:  # noqa: ARG001
    # identity_json (the model file's identity), home (the store) and store_written (when the store last changed:
    # a point stored since makes the estimate shorter) are part of the cache key only.
    spec = json.loads(spec_json)
    return estimate_job(kind, spec, get_model(spec["model"]), Store(), measure=False)


def throughput_spec(model: str, protocol: dict) -> dict:
    """The spec of the short job that measures this machine's speed for `model` (`estimates.run_throughput_job`)."""
    return {"model": model, "seqlen": int(protocol["seqlen"]), "dtype": str(protocol.get("dtype") or "float32")}


def measured_throughput(model: str, seqlen: int, dtype: str) -> Optional[float]:
    """This machine's stored forward speed (tokens/s) for `model`, or None when it was never measured (never
    measured here: the page runs `throughput_spec`'s job instead)."""
    return _estimates.measure_throughput(get_model(model), int(seqlen), dtype, Store(), measure=False)


#: The job kinds `pruning_core.jobs.estimates.estimate_job` estimates (from this machine's measured speed).
_ESTIMATED = ESTIMATED_KINDS


def estimate(kind: str, settings: dict, spec: dict) -> Optional[dict]:
    """The engine's {"seconds", "peak_memory_bytes", "breakdown", "assumptions"} for a job, or {"measure":
    spec} when this machine's speed for the model is not stored yet (the page measures it in that short job).

    One function (`pruning_core.jobs.estimates.estimate_job`: one estimating function per run kind) for every
    page that shows an estimate, with this machine's measured throughput, the windows the corpora really hold and
    the results already stored, so the Setup page and the task pages give the same job the same duration."""
    spec = {**spec, "model": spec.get("model") or settings["model"]}
    protocol = spec.get("protocol") or {"seqlen": settings["seqlen"], "dtype": settings["dtype"]}
    protocol = {**Protocol().to_dict(), **protocol}
    if kind in _ESTIMATED and measured_throughput(spec["model"], protocol["seqlen"], protocol.get("dtype") or
                                                  "float32") is None:
        return {"measure": throughput_spec(spec["model"], protocol)}  # not cached: measured once, then estimated
    return _estimate(kind, json.dumps(spec, sort_keys=True, default=str),
                     json.dumps(model_identity(spec["model"]), sort_keys=True, default=str), str(home_dir()),
                     _store_written())


def _store_written() -> float:
    """When the store's files last changed (seconds): an estimate made before then may miss stored results
    (Curves said 26 min after every point had been stored)."""
    path = Store().path
    times = [p.stat().st_mtime for p in (path, path.with_name(path.name + "-wal")) if p.exists()]
    return max(times, default=0.0)


def time_left(status: dict) -> Optional[float]:
    """Seconds left of a running job as the job panel shows them: the same estimate the page showed before
    the run (`estimate`) at the start, the job's own measured rate as it progresses
    (`pruning_core.analysis.estimates.time_left`)."""
    rate_eta = status.get("eta_seconds")
    if not status.get("started"):
        return rate_eta
    spec = status.get("spec") or {}
    try:
        planned = (estimate(status.get("kind", ""), {"model": spec.get("model")}, spec) or {}).get("seconds") \
            if spec.get("model") else None
    except Exception:  # noqa: BLE001 - the job's own rate is a fine answer when no estimate can be made
        planned = None
    return _estimates.time_left(planned, time.time() - float(status["started"]),
                                float(status.get("fraction") or 0.0), rate_eta)

"""Jobs in real worker processes: kill and resume, cancel, no duplicates, failures, cached results.

Uses the built-in `selftest` job (points that take `sleep` seconds each), so no model is needed.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from pruning_core.jobs import runner as jobs_mod
from pruning_core.errors import ConfigError, JobCancelled
from pruning_core.jobs.runner import JobRunner
from pruning_core.store import Store, content_hash


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESCOPE_HOME", str(tmp_path / "home"))
    runner = JobRunner()
    assert runner.store.path.parent == tmp_path / "home"
    yield runner
    # Stop any worker this test left running (only processes this test process started).
    for proc in list(jobs_mod._CHILDREN.values()):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    jobs_mod._CHILDREN.clear()


def _points(store: Store, name: str) -> list[dict]:
    return store.results_for_run(content_hash({"selftest": name}))


#: How long a test waits for something that should happen: a bound on waiting on a busy machine, never a claim
#: about speed (no test asserts on wall time).
PATIENCE_S = 120.0


def _wait_for(predicate, timeout: float = PATIENCE_S, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError("condition not reached in time")


def test_killed_worker_is_interrupted_and_resubmit_resumes(runner):
    spec = {"name": "resume", "steps": 60, "sleep": 0.2}
    first = runner.submit("selftest", spec)
    _wait_for(lambda: len(_points(runner.store, "resume")) >= 8)
    status = runner.status(first)
    assert status["state"] == "running" and status["alive"] and 0 < status["fraction"] < 1
    assert status["eta_seconds"] is not None and status["eta_seconds"] > 0

    os.killpg(status["pid"], signal.SIGKILL)  # the worker leads its own session: kill it like a crash would
    status = runner.wait(first, timeout=PATIENCE_S)
    assert status["state"] == "interrupted" and not status["alive"]
    before = {p["i"]: p for p in _points(runner.store, "resume")}
    assert 8 <= len(before) < 60 and sorted(before) == list(range(len(before)))

    second = runner.submit("selftest", spec)
    assert second != first  # an interrupted job is not attached to: a new one starts
    done = runner.wait(second, timeout=PATIENCE_S)
    assert done["state"] == "done" and done["fraction"] == 1.0
    assert done["result"]["skipped"] == len(before) and done["result"]["computed"] == 60 - len(before)
    after = _points(runner.store, "resume")
    assert [p["i"] for p in after] == list(range(60)) and all(p["value"] == p["i"] ** 2 for p in after)
    for p in after[: len(before)]:  # early points kept: same timestamps, written by the killed worker
        assert p == before[p["i"]] and p["pid"] == status["pid"]
    assert {p["pid"] for p in after[len(before):]} == {done["pid"]} != {status["pid"]}


def test_cancel_stops_the_worker_and_nothing_runs_after_it(runner):
    job = runner.submit("selftest", {"name": "cancel", "steps": 200, "sleep": 0.2})
    _wait_for(lambda: runner.status(job)["fraction"] > 0)
    runner.cancel(job)
    status = runner.wait(job, timeout=PATIENCE_S)
    assert status["state"] == "cancelled" and not status["alive"] and status["error"] is None
    proc_gone = _wait_for(lambda: not jobs_mod._pid_alive(status["pid"]))
    assert proc_gone
    kept = len(_points(runner.store, "cancel"))
    assert 1 <= kept < 200
    time.sleep(0.5)
    assert len(_points(runner.store, "cancel")) == kept  # nothing runs after the cancel


def test_same_spec_attaches_and_done_results_come_back_identical(runner):
    spec = {"name": "dup", "steps": 10, "sleep": 0.1}
    job = runner.submit("selftest", spec)
    assert runner.submit("selftest", dict(reversed(list(spec.items())))) == job  # same content, other order
    other = runner.submit("selftest", {**spec, "name": "dup2"})
    assert other != job
    running = [j for j in runner.list_jobs() if j["state"] in ("queued", "running")]
    assert {j["id"] for j in running} == {job, other}

    done = runner.wait(job, timeout=PATIENCE_S)
    assert done["state"] == "done"
    points = _points(runner.store, "dup")
    # A done job is a cached result: submitting again returns it, and nothing is recomputed.
    assert runner.submit("selftest", spec) == job
    assert runner.run_inline("selftest", spec) == done["result"]
    assert runner.status(job)["result"] == done["result"]
    assert _points(runner.store, "dup") == points
    assert len(runner.store.jobs_with_key(jobs_mod.job_key("selftest", spec))) == 1
    runner.wait(other, timeout=PATIENCE_S)


def test_failing_job_records_a_one_line_error(runner):
    job = runner.submit("selftest", {"name": "fail", "steps": 10, "sleep": 0.01, "fail_at": 3})
    status = runner.wait(job, timeout=PATIENCE_S)
    assert status["state"] == "failed" and not status["alive"]
    assert "step 3 failed on purpose" in status["error"]
    assert "\n" not in status["error"] and "Traceback" not in status["error"]
    assert "Traceback (most recent call last)" in open(status["log_path"]).read()
    assert [p["i"] for p in _points(runner.store, "fail")] == [0, 1, 2]  # finished points are kept
    assert abs(status["fraction"] - 0.3) < 1e-9  # the last reported progress is recorded, not lost to throttling


def test_inline_run_bookkeeping_cancel_and_failure(runner):
    seen = []
    result = runner.run_inline("selftest", {"name": "inline", "steps": 5, "sleep": 0}, lambda f, m: seen.append(f))
    assert result["points"] == 5 and seen[-1] == 1.0
    (job,) = runner.list_jobs()
    assert job["state"] == "done" and job["pid"] == os.getpid() and job["result"] == result

    with pytest.raises(RuntimeError, match="failed on purpose"):
        runner.run_inline("selftest", {"name": "inline-fail", "steps": 5, "sleep": 0, "fail_at": 1})
    assert runner.list_jobs()[0]["state"] == "failed"

    # Cancel from elsewhere (another runner, as the dashboard would) while it runs in this process.
    def cancel_soon():
        time.sleep(0.5)
        other = JobRunner(Store(runner.store.path))
        other.cancel(other.list_jobs()[0]["id"])

    thread = threading.Thread(target=cancel_soon)
    thread.start()
    with pytest.raises(JobCancelled):  # 100 steps of 0.05 s: the cancel lands long before the last one
        runner.run_inline("selftest", {"name": "inline-cancel", "steps": 100, "sleep": 0.05})
    thread.join()
    assert len(_points(runner.store, "inline-cancel")) < 100
    assert runner.list_jobs()[0]["state"] == "cancelled"


def test_stale_heartbeat_means_interrupted(runner):
    # A live pid (ours) but no sign of life for longer than STALE_AFTER_S: the pid may have been reused.
    old = time.time() - jobs_mod.STALE_AFTER_S - 5
    runner.store.insert_job({"id": "stale", "key": "k", "kind": "selftest", "spec": {}, "state": "running",
                             "created": old, "updated": old, "heartbeat": old, "pid": os.getpid()})
    status = runner.status("stale")
    assert status["state"] == "interrupted" and not status["alive"] and "resume" in status["error"]


def test_unknown_kind_names_the_known_ones(runner):
    from pruning_core.jobs.runner import JOB_KINDS

    with pytest.raises(ConfigError, match="known kinds: " + ", ".join(sorted(JOB_KINDS))):
        runner.submit("nope", {})
    with pytest.raises(ConfigError, match="plain JSON"):
        runner.submit("selftest", {"name": object()})


def _proc_state(pid: int) -> str | None:
    """The state letter of process `pid` from /proc (Z = defunct), or None when no such process exists."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def test_a_finished_worker_is_reaped_not_left_defunct(runner):
    job = runner.submit("selftest", {"name": "reap", "steps": 2, "sleep": 0.05})
    # Watch the row only (no runner.wait, which reaps on its own): nobody in this process asks after the job.
    row = _wait_for(lambda: (j := runner.store.get_job(job)) and j["state"] == "done" and j)
    pid = int(row["pid"])
    assert pid != os.getpid()
    _wait_for(lambda: _proc_state(pid) is None)  # gone: not a zombie ("Z") left behind
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already waited for
    assert job not in jobs_mod._CHILDREN
    # Status and list calls after the end keep working and see no live worker.
    assert runner.status(job)["alive"] is False and runner.list_jobs()[0]["id"] == job


def test_status_and_list_reap_finished_children_without_blocking(runner, monkeypatch):
    # Without the reaper thread (as if it had not run yet), a status or list call collects the ended worker.
    monkeypatch.setattr(jobs_mod, "_reap_when_done", lambda job_id, proc: None)
    job = runner.submit("selftest", {"name": "reap-on-status", "steps": 1, "sleep": 0.01})
    pid = int(_wait_for(lambda: (j := runner.store.get_job(job)) and j["state"] == "done" and j)["pid"])
    _wait_for(lambda: _proc_state(pid) == "Z")  # ended, nobody has waited for it yet
    runner.list_jobs()  # collects the ended worker (a blocking wait would hang here if it did not)
    assert _proc_state(pid) is None and job not in jobs_mod._CHILDREN


def test_a_report_held_back_by_the_throttle_is_written_soon(runner):
    # "evaluating 4/4" followed at once by a new step that runs silently: the new step's message must reach
    # the store (the dashboard) within about a second, not when the step ends.
    now = time.time()
    runner.store.insert_job({"id": "flush", "key": "k-flush", "kind": "selftest", "spec": {}, "state": "running",
                             "created": now, "updated": now, "heartbeat": now, "pid": os.getpid()})
    with jobs_mod._Monitor(runner.store, "flush", hard_exit=False) as monitor:
        writer = jobs_mod._ProgressWriter(runner.store, "flush", monitor, None)
        monitor.writer = writer
        writer(0.5, "evaluating 4/4")
        writer(0.55, "wanda 50 %: pruning")  # within the write interval: held back
        assert runner.store.get_job("flush")["message"] == "evaluating 4/4"
        _wait_for(lambda: runner.store.get_job("flush")["message"] == "wanda 50 %: pruning")  # step still running
    assert runner.store.get_job("flush")["fraction"] == pytest.approx(0.55)

"""A worker killed by the system (SIGKILL, what the kernel's out-of-memory killer sends) is reported as "killed
(out of memory?)", not as a silent dead job; its finished points stay in the store, and submitting the same job
again computes only the missing ones. A real sweep on the tiny model, in a real worker process, really killed."""

from __future__ import annotations

import os
import signal
import time

from pruning_core.analysis.sweep import SweepSpec
from pruning_core.cli.main import main
from pruning_core.jobs.runner import ACTIVE_STATES, KILLED_ERROR, JobRunner, vanished_error
from pruning_core.protocol import Protocol
from pruning_core.store import Store

#: Generous: a worker imports torch and loads the model before its first point (seconds on a busy machine).
PATIENCE_S = 300.0


def _stored_points(store: Store) -> int:
    return store.execute("SELECT COUNT(*) AS n FROM results WHERE kind = 'sweep_point'")[0]["n"]


def test_a_killed_worker_is_reported_as_killed_and_its_job_resumes_from_the_points_it_stored(capsys):
    store = Store()  # the user's store (this test's PRUNESCOPE_HOME): `prunescope jobs` lists it
    runner = JobRunner(store)
    sparsities = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 19 points per method: the kill lands mid-run
    spec = SweepSpec(model="tiny-llama", methods=("wanda", "magnitude"), sparsities=sparsities,
                     eval_corpora=("news",), propagation="pruned",
                     protocol=Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=2)).validate().to_dict()
    total = 2 * len(sparsities)
    first = runner.submit("sweep", spec)
    deadline = time.monotonic() + PATIENCE_S
    while _stored_points(store) == 0:  # poll the store until the first point is in
        assert runner.status(first)["state"] in ACTIVE_STATES, runner.status(first)
        assert time.monotonic() < deadline, "the worker stored no point in time"
        time.sleep(0.01)
    os.kill(int(runner.status(first)["pid"]), signal.SIGKILL)

    killed = runner.wait(first, timeout=PATIENCE_S)
    assert killed["state"] == "interrupted" and killed["error"] == KILLED_ERROR, killed
    assert killed["error"].startswith("killed (out of memory?)") and vanished_error(first) == KILLED_ERROR
    kept = _stored_points(store)
    assert 1 <= kept < total  # the finished points are kept, and the kill came before the end
    assert main(["jobs"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert listed[first[:8]].split()[1:3] == ["sweep", "interrupted"] and "killed (out of memory?)" in listed[first[:8]]

    second = runner.submit("sweep", spec)  # the same spec: a new job that resumes
    assert second != first
    done = runner.wait(second, timeout=PATIENCE_S)
    assert done["state"] == "done", done
    assert done["result"]["execution"]["points_computed"] == total - kept  # only the missing points
    assert len(done["result"]["points"]) == total and _stored_points(store) == total
    assert runner.status(first)["error"] == KILLED_ERROR  # the killed attempt keeps saying why it ended
    assert main(["jobs"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert listed[second[:8]].split()[1:3] == ["sweep", "done"] and "killed (out of memory?)" in listed[first[:8]]

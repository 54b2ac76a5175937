"""Finished job results as the store keeps them: the newest first, of one kind, optionally of one model source.

Read through the store's public API (`Store.recent_jobs`), so the dashboard, the library's choosers of stored
results (`analysis.stored_maps`) and anything else that reads "the newest finished sweep of this model" agree.
"""

from __future__ import annotations

from typing import Optional

from pruning_core.store import Store

#: How many of the most recent jobs are looked through (a store holds every job ever run).
RECENT_JOBS = 100


def _finished(store: Store, model: Optional[str]) -> list[dict]:
    """The finished jobs with a result among the `RECENT_JOBS` newest (of the model source `model` if given)."""
    return [job for job in store.recent_jobs(limit=RECENT_JOBS)
            if (model is None or (job.get("spec") or {}).get("model") == model)
            and job["state"] == "done" and job.get("result")]


def finished_results(store: Store, kind: str, model: Optional[str] = None, limit: int = 20) -> list[dict]:
    """Finished job results of `kind` (for the model source `model` if given), newest first:
    [{"id", "spec", "result", "finished"}], at most `limit` of them among the `RECENT_JOBS` newest jobs."""
    return [{"id": job["id"], "spec": job["spec"], "result": job["result"], "finished": job.get("finished")}
            for job in _finished(store, model) if job["kind"] == kind][:limit]


def finished_counts(store: Store, model: Optional[str] = None) -> dict[str, int]:
    """How many finished results of each kind `finished_results` would find (one read of the store)."""
    counts: dict[str, int] = {}
    for job in _finished(store, model):
        counts[job["kind"]] = counts.get(job["kind"], 0) + 1
    return counts

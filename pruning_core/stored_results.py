"""Finished job results as the store keeps them: the newest first, of one kind, optionally of one model source.

Read through the store's public API (`Store.recent_jobs`), so the dashboard, the library's choosers of stored
results (`analysis.stored_maps`) and anything else that reads "the newest finished sweep of this model" agree.
"""

from __future__ import annotations

from typing import Optional

from pruning_core.store import Store

#: How many of the most recent jobs are looked through (a store holds every job ever run).
RECENT_JOBS = 100


def finished_results(store: Store, kind: str, model: Optional[str] = None, limit: int = 20) -> list[dict]:
    """Finished job results of `kind` (for the model source `model` if given), newest first:
    [{"id", "spec", "result", "finished"}], at most `limit` of them among the `RECENT_JOBS` newest jobs."""
    out = []
    for job in store.recent_jobs(limit=RECENT_JOBS):
        if model is not None and (job.get("spec") or {}).get("model") != model:
            continue
        if job["kind"] == kind and job["state"] == "done" and job.get("result"):
            out.append({"id": job["id"], "spec": job["spec"], "result": job["result"], "finished": job.get("finished")})
        if len(out) >= limit:
            break
    return out

"""Summary: the smallest file within a quality budget across techniques (the frontier, when it was measured),
the recommended pruning setting for that budget, judged on the worst of the chosen corpora, what each
kind of pruning gains and costs side by side, and what became of the recommendation.

The recommendation is the library's (`pruning_core.analysis.recommend`) over every finished sweep of the model
(merged, `sweep.merged_sweeps`) and the finished budget searches of this budget; its size and speed are worded by
`pruning_core.claims` exactly as the What-if page and the report word them. The table of kinds is
`pruning_core.analysis.tradeoffs.tradeoff_rows`.
"""

from __future__ import annotations

from typing import Optional, Sequence

from app.services.budget import budget_spec, budget_status
from app.services.frontier import frontier_chart as _frontier_chart
from app.services.frontier import stored_frontier
from app.services.recovery import latest_recovery_result, recovery_source
from app.services.sweep import merged_sweeps  # noqa: F401 - the page's results
from app.services.models import dense_file_size
from app.services.what_if import setting_claims
from pruning_core.analysis.recommend import recommend, searched_point, worst_change  # noqa: F401 - the page's
from pruning_core.analysis.tradeoffs import tradeoff_rows
from pruning_core.frontier.report import answer_speed
from pruning_core.sizes.records import sizes_for_point
from pruning_core.errors import PruneScopeError


def judged_choice(available: Sequence[str], chosen: Optional[Sequence[str]]) -> list[str]:
    """The corpora to judge on: those of `chosen` that are `available`, in the order of `available` (so the same
    choice always names the same budget-search job), or every available corpus when none is chosen."""
    picked = [c for c in available if c in set(chosen or ())]
    return picked or list(available)


def point_claims(results: dict, point: dict) -> dict:
    """`setting_claims` for a measured sweep point (counts from the sweep's model and the point's measured
    sparsity; bytes from the dense model's files as the store measured them, since a pruned model saved the
    ordinary way stores its zeros): the Summary page's wording of the recommended setting."""
    structure = str(point.get("structure", "unstructured"))
    model = results.get("model") or {}
    dense = dense_file_size(model.get("fingerprint"))
    return setting_claims(sizes_for_point(model, point, dense), structure, model.get("fingerprint"))


def unstructured_speed() -> str:
    """The claims module's sentence on what unstructured zeros gain in speed (nothing, on dense kernels)."""
    return setting_claims(None, "unstructured")["speed"]


def recovered(model: str, point: dict) -> Optional[dict]:
    """The newest finished recovery of a recommended sweep point's setting (Recovery page), or None."""
    return latest_recovery_result(model, recovery_source(point))


def searched_points(settings: dict, budget: float, corpora, methods, allocation: str) -> list[dict]:
    """The answers of the finished budget searches the Summary shows (one per method, this budget, these corpora
    and allocation) as measured points (`recommend.searched_point`), for the recommendation to weigh with the
    sweep's points."""
    points = []
    for method in methods:
        try:
            status = budget_status(budget_spec(settings, method, allocation, budget, corpora))
        except PruneScopeError:
            continue
        if status and status.get("state") == "done":
            found = searched_point(status.get("result") or {})
            if found:
                points.append(found)
    return points


def kinds_table(results: Optional[dict], corpora: Sequence[str], budget: float, searched=(),
                structured: Optional[dict] = None) -> list[dict]:
    """Quality, size and speed of each kind of pruning for this budget (`tradeoffs.tradeoff_rows`): the sweep's
    points and the searches' edges, and `structured` (the model's newest structured run,
    `structured.latest_structured_result`) as the structured row."""
    dense = dense_file_size(((results or {}).get("model") or {}).get("fingerprint"))
    return tradeoff_rows(results, corpora, budget, searched, structured, dense)


def frontier_answer(settings: dict, corpora: Sequence[str], budget: float) -> Optional[dict]:
    """The frontier across techniques (quantized, pruned, structured and their combinations, sizes measured on the
    files) judged on the worst of `corpora`, answered for "the smallest file within +budget" (`frontier.
    stored_frontier`, the Frontier page's own call), or None while the dense model's files were not measured or
    nothing but pruning was: zeros buy no bytes, so a frontier of pruned points alone would only ever answer "keep
    the dense model" above the question the page asks (how far to prune); the frontier leads once a technique
    that changes the files (quantization, alone or combined, or a smaller dense model) was measured."""
    frontier = stored_frontier(settings, corpora, max_increase=budget)
    if frontier is None or not any("quantized" in row["family"] or row["family"] == "smaller dense"
                                   for row in frontier["points"]):
        return None
    return frontier


def frontier_speed(frontier: dict) -> str:
    """The recommended point's speed measured in a runtime, naming the runtime and the machine, against the dense
    model's where both were measured there (`frontier.speeds.speed_sentence`); "not measured in a runtime"
    otherwise (never an estimate)."""
    return answer_speed(frontier)


def frontier_chart(frontier: dict, corpus: Optional[str] = None):
    """The Frontier page's chart of `frontier` (sizes on disk against perplexity on `corpus`)."""
    return _frontier_chart(frontier, corpus)

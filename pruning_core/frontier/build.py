"""A frontier from its points: judged on the worst chosen corpus, the front marked, the answer for one budget.

`build_frontier` is what the command, the job, the dashboard and the report call, so they agree. Its dict (what
frontier.json holds under "frontier"): {"corpora" (judged on), "dense_ppl", "dense_bytes", "points" [each
`FrontierPoint.to_dict()` plus "change" (worst, a fraction), "worst_corpus", "on_front" (bool)], "front" (keys,
smallest file first), "left_out" (points not measured on every chosen corpus), "answer" {"question", "budget",
"key" (the answer's point, or None), "sentence", "found", "note"}}.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

from pruning_core.errors import ConfigError
from pruning_core.frontier.answer import answer
from pruning_core.frontier.pareto import judge, pareto_front
from pruning_core.frontier.points import FrontierPoint


def newest_per_key(points: Sequence[FrontierPoint]) -> list[FrontierPoint]:
    """Each technique once: of points with the same key, the first given (callers pass the newest first)."""
    seen: dict[str, FrontierPoint] = {}
    for point in points:
        seen.setdefault(point.key, point)
    return list(seen.values())


def build_frontier(points: Sequence[FrontierPoint], corpora: Sequence[str], max_increase: Optional[float] = None,
                   max_bytes: Optional[int] = None, labels: Optional[Mapping[str, str]] = None) -> dict:
    """The frontier of `points` (one of them the dense model, family "dense") judged on the worst of `corpora`,
    with the answer for one budget (`answer.answer`; a +10 % budget when neither is given)."""
    points = newest_per_key(points)
    dense = next((p for p in points if p.family == "dense"), None)
    if dense is None:
        raise ConfigError("The frontier needs the dense model's perplexity and file size; measure the dense model "
                          "first (prunescope frontier measures it).")
    missing = [c for c in corpora if c not in dense.ppl]
    if missing:
        raise ConfigError(f"The dense model was not evaluated on {', '.join(missing)}; evaluate it there, or judge "
                          f"on {', '.join(dense.ppl)}.")
    if max_increase is None and max_bytes is None:
        max_increase = 0.10
    judged, left_out = judge(points, dense.ppl, corpora)
    front = pareto_front(judged)
    on_front = {j.point.key for j in front}
    dense_judged = next(j for j in judged if j.point.key == dense.key)
    said = answer(judged, dense_judged, list(corpora), max_increase, max_bytes, labels)
    rows = [{**j.point.to_dict(), "change": j.change, "worst_corpus": j.corpus, "on_front": j.point.key in on_front}
            for j in sorted(judged, key=lambda j: (j.bytes, j.change))]
    return {"corpora": list(corpora), "dense_ppl": {c: float(dense.ppl[c]) for c in corpora},
            "dense_bytes": dense.bytes, "points": rows, "front": [j.point.key for j in front],
            "left_out": left_out,
            "answer": {**{k: v for k, v in said.items() if k != "point"},
                       "key": said["point"].point.key if said["point"] is not None else None}}


def frontier_points(frontier: Mapping) -> list[FrontierPoint]:
    """The points of a `build_frontier` dict (or a stored frontier job's) as `FrontierPoint`s again."""
    return [FrontierPoint.from_dict(row) for row in frontier.get("points") or []]

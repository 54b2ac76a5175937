"""The Pareto front over (bytes on disk, perplexity on the worst chosen corpus), and the two budget answers.

Every point is judged like every other recommendation (`analysis.recommend.worst_change`): its largest relative
perplexity change over the dense model among the chosen corpora. With one corpus that orders points exactly as
their perplexity does; with several, perplexities of different corpora are not on one scale, so the worst change
is what "worse on the worst corpus" means. A point not measured on every chosen corpus cannot be judged and is
left out (counted).

A point is on the front when no other point is at most as large AND at most as bad, and strictly better in one
of the two (`pareto_front`): exactly the non-dominated points. Both answers are points of the front:
- `smallest_within(judged, max_increase)`: the smallest file whose worst change is at most max_increase;
- `best_within_bytes(judged, max_bytes)`: the best worst change among files of at most max_bytes bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from pruning_core.analysis.recommend import judged_corpora, worst_change
from pruning_core.frontier.points import FrontierPoint


@dataclass(frozen=True)
class Judged:
    """A point with its bytes and its worst change (a fraction, 0.10 = +10 %) and the corpus where it is worst."""

    point: FrontierPoint
    bytes: int
    change: float
    corpus: str

    @property
    def ppl(self) -> float:
        """The point's perplexity on the corpus where it is worst."""
        return float(self.point.ppl[self.corpus])


def judge(points: Sequence[FrontierPoint], dense_ppl: Mapping[str, float],
          corpora: str | Sequence[str]) -> tuple[list[Judged], int]:
    """(each point measured on every chosen corpus, judged; how many were left out for lacking one)."""
    chosen = judged_corpora(corpora)
    judged, left_out = [], 0
    for point in points:
        found = worst_change({"ppl": point.ppl}, dense_ppl, chosen)
        if found is None:
            left_out += 1
            continue
        judged.append(Judged(point, point.bytes, float(found[0]), found[1]))
    return judged, left_out


def dominates(a: Judged, b: Judged) -> bool:
    """Whether `a` is at most as large and at most as bad as `b`, and strictly better in one of the two."""
    return a.bytes <= b.bytes and a.change <= b.change and (a.bytes < b.bytes or a.change < b.change)


def pareto_front(judged: Sequence[Judged]) -> list[Judged]:
    """The non-dominated points (no other point `dominates` them), smallest file first. Two points equal in both
    bytes and change are both on the front (neither dominates the other)."""
    ordered = sorted(judged, key=lambda j: (j.bytes, j.change))
    front: list[Judged] = []
    best = float("inf")  # the smallest change among strictly smaller files seen so far
    i = 0
    while i < len(ordered):
        same = [j for j in ordered[i:] if j.bytes == ordered[i].bytes]  # one file size: only its best changes
        least = min(j.change for j in same)
        if least < best:
            front.extend(j for j in same if j.change == least)
            best = least
        i += len(same)
    return front


def smallest_within(judged: Sequence[Judged], max_increase: float) -> Optional[Judged]:
    """The smallest file whose worst change is at most `max_increase` (a fraction); ties: the smaller change.
    None when no point is within (the dense model is, when it was measured: its change is 0)."""
    within = [j for j in judged if j.change <= max_increase]
    return min(within, key=lambda j: (j.bytes, j.change)) if within else None


def best_within_bytes(judged: Sequence[Judged], max_bytes: int) -> Optional[Judged]:
    """The point with the smallest worst change among files of at most `max_bytes` bytes; ties: the smaller file.
    None when every file is larger."""
    fits = [j for j in judged if j.bytes <= max_bytes]
    return min(fits, key=lambda j: (j.change, j.bytes)) if fits else None

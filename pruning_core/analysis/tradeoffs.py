"""Quality, size and speed side by side for each kind of pruning, each with its quality cost, for one budget.

One row per kind a user can choose: unstructured pruning per method, each N:M structure measured (2:4...), and
structured pruning (whole heads, channels, layers removed). Each row is one measured setting: the highest one
within the budget judged on the worst of the chosen corpora (`recommend.worst_change`), or, when none of that
kind is, the one that came closest (marked over the budget), so that no kind is shown without what it costs.

Sizes are the files' bytes as measured (`pruning_core.sizes`); speed is the claims module's: speed measured where
a measurement exists (a structured run's timing) and otherwise the short form of its speed sentence. Nothing here
measures or estimates anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

from pruning_core import claims
from pruning_core.analysis.recommend import judged_corpora, worst_change
from pruning_core.analysis.sweep_results import point_allocation
from pruning_core.masks import parse_structure
from pruning_core.sizes.records import STRUCTURED, measured, sizes_for_point
from pruning_core.units import format_bytes


def size_short(sizes: Optional[Mapping[str, Any]]) -> tuple[Optional[str], Optional[int]]:
    """(the measured 16-bit safetensors file of a result in a few words, its weight bytes), e.g. ("216.0 MB as
    16-bit safetensors (1.25x smaller)", 215_976_352); a result measured only as the dense model's files (a pruned
    model saved the ordinary way stores its zeros) reads "269.1 MB, as dense: zeros are stored". (None, None)
    when nothing was measured."""
    dense = measured(sizes, "dense")
    own = measured(sizes, STRUCTURED) or measured(sizes, "pruned")
    if own is None and dense is None:
        return None, None
    if own is None or (dense is not None and own["weight_bytes"] >= dense["weight_bytes"]):
        size = int((own or dense)["weight_bytes"])
        return f"{format_bytes(size)} as 16-bit safetensors, as dense: zeros are stored", size
    size = int(own["weight_bytes"])
    ratio = f" ({dense['weight_bytes'] / size:.2f}x smaller)" if dense else ""
    return f"{format_bytes(size)} as 16-bit safetensors{ratio}", size


def _pick(candidates: list[tuple[float, float, str, Any]], budget: float) -> Optional[tuple]:
    """The highest amount within the budget (ties: the smaller change), else the smallest change (ties: the
    higher amount); candidates are (amount, change, corpus, point)."""
    within = [c for c in candidates if c[1] <= budget]
    if within:
        return max(within, key=lambda c: (c[0], -c[1]))
    return min(candidates, key=lambda c: (c[1], -c[0])) if candidates else None


def _row(kind: str, structure: str, method: Optional[str], picked: tuple, dense: Mapping[str, float],
         corpora: list[str], budget: float, size: tuple, speed: str, measured: bool, source: str,
         amount_of: str, index: Optional[int] = None) -> dict:
    amount, change, corpus, point = picked
    return {"kind": kind, "structure": structure, "method": method, "amount": amount, "amount_of": amount_of,
            "allocation": point_allocation(point) if source != "structured" else point.get("allocation", "uniform"),
            "within": change <= budget, "change": change, "corpus": corpus, "corpora": list(corpora),
            "ppl": float(point["ppl"][corpus]), "dense_ppl": float(dense[corpus]),
            "size": size[0], "size_bytes": size[1], "speed": speed, "speed_measured": measured,
            "source": source, "point": point, "index": index}


def tradeoff_rows(results: Optional[dict], corpora: str | Sequence[str], budget: float, searched=(),
                  structured: Optional[dict] = None,
                  dense_measured: Optional[Mapping[str, Any]] = None) -> list[dict]:
    """The rows of the "each kind of pruning" table.

    results: merged sweep results (`sweep_results.merge_sweeps`; None when there is no sweep); searched:
    budget-search answers (`recommend.searched_point`), weighed with the sweep's unstructured points;
    structured: the newest structured run's result (`structured.run.run_structured`), or None.
    dense_measured: the dense model's 16-bit safetensors measurement (`sizes.measure`), the file size of every
    sweep point (zeros are stored), or None when the store holds none.
    corpora: the chosen corpora; every change is the worst over them. A structured run judged on other corpora
    than the sweep's is judged on those of the chosen corpora it measured (all of its own when it measured none
    of them); its row's "corpora" says which.
    budget: a fraction (0.10 = +10 %).

    Returns [{"kind" ("unstructured", "N:M", "structured"), "structure", "method" (None for structured),
    "amount" (sparsity, or the fraction of decoder parameters removed), "amount_of" ("sparsity" or "decoder
    parameters removed"), "allocation", "within" (bool), "change" (fraction, the worst), "corpus" (where it is
    worst), "corpora" (judged on), "ppl", "dense_ppl" (on that corpus), "size" (words or None), "size_bytes",
    "speed" (words), "speed_measured" (bool), "source" ("sweep", "search" or "structured"), "point" (the measured
    point: a sweep point to export, or a structured run's point), "index" (the structured point's index in its
    run, else None)}], unstructured methods first (in the order first measured), then N:M, then structured.
    """
    chosen = judged_corpora(corpora)
    rows: list[dict] = []
    if results and results.get("points"):
        dense_all = (results.get("dense") or {}).get("ppl") or {}
        dense = {c: float(dense_all[c]) for c in chosen if c in dense_all}
        model = results.get("model") or {}
        kinds: dict[tuple[str, Optional[str]], list] = {}
        for point in [*results["points"], *[s for s in searched if s]]:
            judged = worst_change(point, dense, chosen)
            if judged is None:
                continue
            structure = str(point.get("structure") or "unstructured")
            nm = parse_structure(structure).is_nm
            key = (structure, None) if nm else ("unstructured", point["method"])
            kinds.setdefault(key, []).append((float(point["sparsity"]), judged[0], judged[1], point))
        order = sorted(kinds, key=lambda k: k[0] != "unstructured")  # stable: methods in the order measured
        for structure, method in order:
            picked = _pick(kinds[(structure, method)], budget)
            point = picked[3]
            sizes = sizes_for_point(model, point, dense_measured)
            rows.append(_row("unstructured" if method else "N:M", structure, method or point["method"], picked, dense,
                             chosen, budget, size_short(sizes), claims.speed_short(structure), False,
                             point.get("source") or "sweep", "sparsity"))
    if structured and structured.get("points"):
        own = structured.get("dense_ppl") or {}
        on = [c for c in chosen if c in own] or list(own)
        dense = {c: float(own[c]) for c in on}
        candidates = []
        for index, point in enumerate(structured["points"]):
            judged = worst_change(point, dense, on)
            if judged is not None:
                candidates.append((float(point["measured_ratio"]), judged[0], judged[1], (index, point)))
        picked = _pick(candidates, budget)
        if picked is not None:
            index, point = picked[3]
            timed = claims.measured_from_speed(point.get("speed"))
            sizes = point.get("sizes")
            rows.append(_row("structured", claims.STRUCTURED, None, (*picked[:3], point), dense, on, budget,
                             size_short(sizes), claims.speed_short(claims.STRUCTURED, timed), timed is not None,
                             "structured", "decoder parameters removed", index))
    return rows

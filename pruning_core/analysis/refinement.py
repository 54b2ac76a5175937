"""The default sensitivity map: a trustworthy first map in about a minute, refined in the background to exact.

Refinement 1 is the second-order (Fisher) estimate (`analysis.second_order`) on the exact metric's own probe
windows: a complete map after one backward pass per window. Refinement 2 is the exact map on the same probe,
computed row by row in `spread_order` (shallow, deep, middle, ...), so while it runs the rows already finished
are an even sample of the depth: after each one the rank agreement of refinement 1 with the exact rows is
measured again and shown. When the exact map is complete it replaces the estimate, with the agreement between
the two refinements over every cell.

Each state is a *view*: the map document being shown plus ``refinement`` = {"step", "of", "name", "final",
"agreement" ({"spearman", "cells", "scope", "against"} or None), "trusted"}. A view whose map is not exact
is trusted only when its measured agreement reaches `TRUSTED_AGREEMENT`; pages withhold their plain-language
reading otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pruning_core.analysis.sensitivity import TRUSTED_AGREEMENT, agreement, compute_sensitivity
from pruning_core.models import LoadedModel
from pruning_core.progress import ProgressFn, no_progress
from pruning_core.protocol import Protocol

#: (metric, what the page calls it) of each refinement, in order.
REFINEMENTS = (
    ("fisher", "second-order estimate"),
    ("exact", "exact loss increase"),
)
#: Exact rows needed before a sampled agreement is reported (7 cells a row on a Llama layer).
MIN_SAMPLE_ROWS = 2


def is_trusted(document: dict, measured: dict | None) -> bool:
    """An exact map is its own truth; any other map needs a measured agreement of at least the threshold."""
    if document.get("metric") == "exact":
        return True
    value = (measured or {}).get("spearman")
    return value is not None and value == value and value >= TRUSTED_AGREEMENT


def view_of(document: dict, step: int, measured: dict | None) -> dict:
    """The map `document` as refinement `step` (1-based), with its measured agreement (or None)."""
    metric, name = REFINEMENTS[step - 1]
    return {**document, "refinement": {
        "step": step, "of": len(REFINEMENTS), "name": name, "final": step == len(REFINEMENTS),
        "agreement": measured, "trusted": is_trusted(document, measured)}}


def refine_sensitivity(loaded: LoadedModel, protocol: Protocol, method: str, sparsity: float,
                       probe_windows: int = 8, store=None, progress: ProgressFn | None = None,
                       on_view: Callable[[dict], None] | None = None, *, dtype: str | None = None,
                       layers: Sequence[int] | None = None) -> dict:
    """Run both refinements of one map; `on_view(view)` sees every state worth showing, newest last.

    Returns {"maps": [estimate, exact], "correlations": [...], "views": [...], "view": the final view}.
    Everything is stored as `compute_sensitivity` stores it, so a stopped refinement resumes where it was.
    """
    progress = progress or no_progress
    views: list[dict] = []
    estimate: dict = {}
    exact_rows: dict[int, list[float]] = {}

    def show(view: dict) -> None:
        views.append(view)
        if on_view is not None:
            on_view(view)

    def map_done(document: dict) -> None:
        if document["metric"] == "fisher":
            estimate["doc"] = document
            show(view_of(document, 1, None))
        else:
            measured = {**agreement(estimate["doc"], dict(zip(document["layers"], document["values"]))),
                        "against": "exact"} if estimate else None
            show(view_of(document, 2, measured))

    def row_done(_sparsity: float, layer: int, values: list[float], _layer_value: float) -> None:
        exact_rows[layer] = values
        if estimate and MIN_SAMPLE_ROWS <= len(exact_rows) < len(estimate["doc"]["layers"]):
            measured = {**agreement(estimate["doc"], exact_rows), "against": "exact"}
            show(view_of(estimate["doc"], 1, measured))

    result = compute_sensitivity(loaded, protocol, method, [sparsity], [m for m, _ in REFINEMENTS],
                                 probe_windows, store, progress, dtype=dtype, layers=layers, on_map=map_done,
                                 on_exact_row=row_done)
    return {**result, "views": views, "view": views[-1]}

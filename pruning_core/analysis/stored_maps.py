"""Which stored sensitivity map to use: the one a page shows beside its figures, the one an allocator reads.

Every finished sensitivity job of a model is in the store (`stored_results.finished_results`); a job's result
holds its maps, the refinement views of an automatic job (`analysis.refinement`) and the measured rank
agreements of its proxies with the exact metric ("correlations"). The rules here pick one map among them, the
same way for every caller, and `top_cells` reads a map's most sensitive cells.
"""

from __future__ import annotations

import math
from typing import Optional

from pruning_core.analysis.refinement import is_trusted
from pruning_core.store import Store
from pruning_core.stored_results import finished_results

#: How a sentence names each metric's map (the refinements name themselves, see `analysis.refinement`).
METRIC_NAMES = {"exact": "exact loss increase", "fisher": "second-order estimate",
                "reconstruction": "reconstruction error", "taylor": "Taylor score"}


def map_agreement(sens: dict, correlations=()) -> Optional[dict]:
    """The measured rank agreement of a map with the exact metric: {"spearman", "cells", "scope", "against"}.

    A refinement view carries its own (for the final exact view: the agreement between the two refinements);
    a proxy map takes its entry in the job result's `correlations` (same metric and sparsity). None for a plain
    exact map and for a proxy whose agreement was not measured (results stored before it was)."""
    refinement = sens.get("refinement")
    if refinement is not None:
        return refinement.get("agreement")
    if sens.get("metric") == "exact":
        return None
    for entry in correlations or ():
        if entry.get("proxy") == sens.get("metric") and sens.get("sparsity") is not None \
                and abs(float(entry.get("sparsity", -1)) - float(sens["sparsity"])) < 1e-9:
            return {"spearman": entry.get("spearman"), "cells": entry.get("cells"),
                    "scope": entry.get("scope") or "", "against": "exact"}
    return None


def map_to_show(store: Store, model: str, near: float = 0.5) -> Optional[tuple[dict, list]]:
    """The stored sensitivity map to show beside other figures of `model`, with its job's correlations, or None.

    Among every finished map of `model` (a refinement's final view where there is one): a trusted map first
    (exact, or a proxy whose measured agreement with exact reaches the threshold, `refinement.is_trusted`), an
    exact map before a proxy, then the sparsity nearest `near`, then the newest. Returns (map, correlations of
    its job, for `map_agreement`)."""
    candidates = []
    for age, found in enumerate(finished_results(store, "sensitivity", model)):
        result = found["result"]
        views, correlations = result.get("views") or [], result.get("correlations") or []
        for m in result.get("maps") or []:
            shown = next((v for v in views if v["metric"] == m["metric"] and v["sparsity"] == m["sparsity"]), m)
            trusted = is_trusted(shown, map_agreement(shown, correlations))
            candidates.append((shown, correlations, trusted, age))
    if not candidates:
        return None
    chosen, correlations, _, _ = max(candidates, key=lambda t: (t[2], t[0]["metric"] == "exact",
                                                                 -abs(float(t[0]["sparsity"]) - near), -t[3]))
    return chosen, correlations


def map_sparsities(result: dict) -> dict[str, set]:
    """metric -> the sparsities (rounded to 6 digits) a sensitivity result has maps at."""
    found: dict[str, set] = {}
    for m in result.get("maps") or []:
        found.setdefault(str(m.get("metric")), set()).add(round(float(m["sparsity"]), 6))
    return found


def sensitivity_for_allocation(store: Store, model: str) -> Optional[dict]:
    """The newest finished sensitivity result of `model` with maps at two or more sparsities of one metric
    (what the `sensitivity` allocator needs to know each module's marginal cost): {"id", "result", "label"}
    (the label names the metric, method and sparsities, e.g. "exact loss increase map of wanda at 40%, 60%"),
    or None when there is none. The exact metric is preferred where it qualifies."""
    for found in finished_results(store, "sensitivity", model):
        usable = {metric: s for metric, s in map_sparsities(found["result"]).items() if len(s) >= 2}
        if usable:
            metric = "exact" if "exact" in usable else sorted(usable)[0]
            spec = found.get("spec") or {}
            label = (f"{METRIC_NAMES.get(metric, metric)} map of {spec.get('method', '?')} at "
                     + ", ".join(f"{s:.0%}" for s in sorted(usable[metric])))
            return {"id": found["id"], "result": found["result"], "label": label}
    return None


def top_cells(sens: dict, n: int = 8) -> list[dict]:
    """The `n` highest finite cells of a sensitivity map: [{"layer", "module", "value", "weights" (the module's
    weight count, None when the map does not record sizes)}], highest first."""
    cells = []
    sizes = sens.get("module_sizes")
    for i, layer in enumerate(sens["layers"]):
        for j, module in enumerate(sens["modules"]):
            value = sens["values"][i][j]
            if value is None or not math.isfinite(float(value)):
                continue
            size = sizes[i][j] if sizes is not None else None
            if isinstance(size, (list, tuple)):
                size = math.prod(int(d) for d in size)
            cells.append({"layer": int(layer), "module": str(module), "value": float(value),
                          "weights": None if size is None else int(size)})
    cells.sort(key=lambda c: c["value"], reverse=True)
    return cells[:n]

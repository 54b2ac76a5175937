"""The recommended setting for a quality budget: the highest measured sparsity whose perplexity stays within it.

Only measured points count (a sweep's, see `analysis.sweep_results.merge_sweeps`): nothing is interpolated, so
the recommendation is always a setting that was pruned and evaluated.
"""

from __future__ import annotations

from pruning_core.errors import ConfigError


def searched_point(result: dict) -> dict | None:
    """A finished budget search's answer as a measured point (`allocation.budget.run_budget`'s result): its
    setting at the highest sparsity that passed, with the perplexity measured there on the search's corpus, or
    None when nothing passed. "source" is "search"."""
    frontier = (result or {}).get("frontier")
    spec = (result or {}).get("spec") or {}
    corpus = ((result or {}).get("budget") or {}).get("corpus")
    if not frontier or corpus is None:
        return None
    return {"method": spec.get("method", "wanda"), "structure": spec.get("structure") or "unstructured",
            "allocation": spec.get("allocation") or spec.get("allocator") or "uniform",
            "propagation": spec.get("propagation") or "pruned", "target_sparsity": float(frontier["sparsity"]),
            "sparsity": float(frontier.get("measured_sparsity") or frontier["sparsity"]),
            "ppl": {corpus: float(frontier["ppl"])}, "source": "search"}


def recommend(results: dict, corpus: str, budget: float, searched=()) -> dict:
    """The highest measured sparsity whose perplexity on `corpus` is at most (1 + budget) x dense.

    searched: budget-search answers for this budget (`searched_point`): measured points too, so a search's edge
    between two sweep points can be the recommendation (one answer, never a headline that contradicts it).

    budget: a fraction (0.10 = +10 %). Returns {"dense_ppl", "best" (point or None), "best_change" (fraction or
    None), "per_method": [(method, change, point)] for each method's highest-sparsity point,
    "per_method_within": {method: (change, point)} for each method's highest-sparsity point within the budget
    (methods with none are absent), "mildest"/"mildest_change": the point with the smallest perplexity change
    (how close the measured points came when none is within the budget)}. Ties at equal sparsity go to the
    lower perplexity. Raises ConfigError when the dense perplexity on `corpus` was not measured.
    """
    dense = ((results.get("dense") or {}).get("ppl") or {}).get(corpus)
    if dense is None:
        raise ConfigError(f"The dense perplexity on '{corpus}' was not measured; run the sweep again.")
    scored = []
    for p in [*results.get("points", []), *[s for s in searched if s]]:
        ppl = (p.get("ppl") or {}).get(corpus)
        if ppl is None:
            continue
        scored.append((float(p["sparsity"]), -ppl, p, ppl / dense - 1.0))
    within = [s for s in scored if s[3] <= budget]
    best = max(within, key=lambda s: (s[0], s[1])) if within else None
    mildest = min(scored, key=lambda s: (s[3], -s[0])) if scored else None  # how close the best point came
    per_method, per_method_within = {}, {}
    for _sparsity, _neg, p, change in sorted(scored, key=lambda s: (s[0], s[1])):
        per_method[p["method"]] = (p["method"], change, p)
        if change <= budget:
            per_method_within[p["method"]] = (change, p)
    return {"dense_ppl": dense, "best": best[2] if best else None, "best_change": best[3] if best else None,
            "mildest": mildest[2] if mildest else None, "mildest_change": mildest[3] if mildest else None,
            "per_method": list(per_method.values()), "per_method_within": per_method_within}

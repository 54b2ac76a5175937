"""The recommended setting for a quality budget: the highest measured sparsity whose perplexity stays within it on
every corpus the user chose.

Only measured points count (a sweep's, see `analysis.sweep_results.merge_sweeps`, and the answers of finished
budget searches, `searched_point`): nothing is interpolated, so the recommendation is always a setting that was
pruned and evaluated. A point is judged on the worst of the chosen corpora (its largest relative perplexity change
over the dense model): a setting within +10 % on wiki but +24 % on the user's own text is over a +10 % budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from pruning_core.errors import ConfigError


def judged_corpora(corpora: str | Sequence[str]) -> list[str]:
    """The corpora to judge on as a list, each once (a single name is one corpus)."""
    names = [corpora] if isinstance(corpora, str) else list(corpora)
    names = list(dict.fromkeys(str(c) for c in names))
    if not names:
        raise ConfigError("Choose at least one evaluation corpus to judge the settings on.")
    return names


def worst_change(point: Mapping, dense: Mapping[str, float], corpora: Sequence[str]) -> tuple[float, str] | None:
    """(the largest relative perplexity change of `point` over the dense model among `corpora`, that corpus), or
    None when `point` was not measured on every one of them (it cannot be judged on the worst).

    dense: {corpus: dense perplexity}. A change is a fraction (0.10 = +10 %); a non-finite perplexity is an
    infinite change. Ties go to the first corpus of `corpora`."""
    ppl = point.get("ppl") or {}
    worst: tuple[float, str] | None = None
    for corpus in corpora:
        value, base = ppl.get(corpus), dense.get(corpus)
        if value is None or base is None:
            return None
        change = float(value) / float(base) - 1.0 if math.isfinite(float(value)) else math.inf
        if worst is None or change > worst[0]:
            worst = (change, corpus)
    return worst


def searched_point(result: dict) -> dict | None:
    """A finished budget search's answer as a measured point (`allocation.budget.search_budget`'s result): its
    setting at the highest sparsity that passed, with the perplexity measured there on each corpus of the search
    (a search on several corpora keeps them all), or None when nothing passed. "source" is "search"."""
    frontier = (result or {}).get("frontier")
    spec = (result or {}).get("spec") or {}
    corpus = ((result or {}).get("budget") or {}).get("corpus")
    if not frontier or corpus is None:
        return None
    ppl = {c: float(v) for c, v in (frontier.get("ppls") or {corpus: frontier["ppl"]}).items()}
    return {"method": spec.get("method", "wanda"), "structure": spec.get("structure") or "unstructured",
            "allocation": spec.get("allocation") or spec.get("allocator") or "uniform",
            "propagation": spec.get("propagation") or "pruned", "target_sparsity": float(frontier["sparsity"]),
            "sparsity": float(frontier.get("measured_sparsity") or frontier["sparsity"]),
            "ppl": ppl, "source": "search"}


def recommend(results: dict, corpora: str | Sequence[str], budget: float, searched=()) -> dict:
    """The highest measured sparsity whose perplexity on each of `corpora` is at most (1 + budget) x dense.

    corpora: the corpora to judge on (one name, or several: the worst of them decides, `worst_change`); a point
    not measured on all of them is left out (counted in "unjudged").
    searched: budget-search answers for this budget (`searched_point`): measured points too, so a search's edge
    between two sweep points can be the recommendation (one answer, never a headline that contradicts it).

    budget: a fraction (0.10 = +10 %). Returns {"corpora" (the list judged on), "dense" ({corpus: dense
    perplexity}), "dense_ppl" (on the first corpus), "best" (point or None), "best_change" (fraction or None),
    "best_corpus" (the corpus of its worst change), "per_method": [(method, change, point)] for each method's
    highest-sparsity point, "per_method_within": {method: (change, point)} for each method's highest-sparsity
    point within the budget (methods with none are absent), "mildest"/"mildest_change"/"mildest_corpus": the
    point with the smallest change (how close the measured points came when none is within the budget),
    "unjudged": how many points lacked one of the corpora}. Every change is the point's worst over `corpora`.
    Ties at equal sparsity go to the smaller change. Raises ConfigError when the dense perplexity on one of the
    corpora was not measured.
    """
    corpora = judged_corpora(corpora)
    measured_dense = (results.get("dense") or {}).get("ppl") or {}
    missing = [c for c in corpora if measured_dense.get(c) is None]
    if missing:
        raise ConfigError(f"The dense perplexity on {', '.join(repr(c) for c in missing)} was not measured; run the "
                          "sweep again with that corpus, or judge on the corpora it measured.")
    dense = {c: float(measured_dense[c]) for c in corpora}
    scored, unjudged = [], 0
    for p in [*results.get("points", []), *[s for s in searched if s]]:
        judged = worst_change(p, dense, corpora)
        if judged is None:
            unjudged += 1
            continue
        scored.append((float(p["sparsity"]), -judged[0], p, judged[0], judged[1]))
    within = [s for s in scored if s[3] <= budget]
    best = max(within, key=lambda s: (s[0], s[1])) if within else None
    mildest = min(scored, key=lambda s: (s[3], -s[0])) if scored else None  # how close the best point came
    per_method, per_method_within = {}, {}
    for _sparsity, _neg, p, change, _corpus in sorted(scored, key=lambda s: (s[0], s[1])):
        per_method[p["method"]] = (p["method"], change, p)
        if change <= budget:
            per_method_within[p["method"]] = (change, p)
    return {"corpora": corpora, "dense": dense, "dense_ppl": dense[corpora[0]],
            "best": best[2] if best else None, "best_change": best[3] if best else None,
            "best_corpus": best[4] if best else None,
            "mildest": mildest[2] if mildest else None, "mildest_change": mildest[3] if mildest else None,
            "mildest_corpus": mildest[4] if mildest else None,
            "per_method": list(per_method.values()), "per_method_within": per_method_within, "unjudged": unjudged}

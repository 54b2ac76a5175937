"""Budget: the budget-search job spec ("the most sparsity within +X %"), its stored answer, and how it is said."""

from __future__ import annotations

from typing import Optional, Sequence, Union

from app.services.jobs import newest_status
from app.services.settings import protocol_of, with_executor
from pruning_core.allocation.budget import BudgetSpec


def budget_spec(settings: dict, method: str, allocation: str, max_increase: float,
                corpus: Union[str, Sequence[str], None] = None, propagation: str = "pruned") -> dict:
    """A budget-search job spec (`pruning_core.allocation.budget.BudgetSpec.to_dict()`), validated: the most
    global sparsity of `method` with `allocation`'s plans whose perplexity stays within +`max_increase` (a
    fraction: 0.10 = +10 %) of dense on `corpus` (default: the first evaluation corpus of the settings), or on
    the worst of several corpora (a list, in a fixed order: the same choice must give the same job)."""
    corpora = [corpus] if isinstance(corpus, str) else list(corpus or [])
    corpora = list(dict.fromkeys(corpora)) or [(settings.get("eval_corpora") or [None])[0]]
    spec = BudgetSpec(model=settings["model"], protocol=protocol_of(settings), method=method, allocation=allocation,
                      propagation=propagation, corpus=corpora[0], more_corpora=tuple(corpora[1:]),
                      max_increase=round(float(max_increase), 6))
    return with_executor(spec.validate().to_dict())


def budget_status(spec: dict) -> Optional[dict]:
    """The newest job of exactly this budget spec (`jobs.job_status`), or None when it was never asked for. A
    finished one holds the search result ("frontier", "trajectory", "certainty", ...): asked again, it is reused."""
    return newest_status("budget", spec)


def budget_answer_words(result: dict) -> dict:
    """How a budget search's answer is said: {"found": bool, "sparsity", "ppl", "increase" (fractions; None
    when nothing passed), "corpus" (where the edge's perplexity is worst; its "ppl" and "increase" are that
    corpus's), "dense_ppl" (the dense perplexity there), "how": one sentence on how it was found (steps visited, evaluation windows, the gap
    between the last passing and the first failing step, reused measurements), "caveat": None or a sentence
    (perplexity not monotone in sparsity, or the edge lies above the searched range)}."""
    frontier = result.get("frontier")
    certainty = result.get("certainty") or {}
    steps = [float(r["sparsity"]) for r in result.get("trajectory") or [] if r.get("sparsity") is not None]
    path = " → ".join(f"{s:.0%}" for s in steps[:12]) + (" …" if len(steps) > 12 else "")
    evaluations, reused = certainty.get("evaluations"), certainty.get("reused") or 0
    how = f"Found by a step-wise search of {len(steps)} step{'s' if len(steps) != 1 else ''} ({path})"
    if evaluations is not None:
        how += f", {evaluations} evaluation{'s' if evaluations != 1 else ''}"
        how += f" ({reused} reused from earlier searches)" if reused else ""
        grid = certainty.get("grid_evaluations")
        how += f" where a grid of 2-point steps needs {grid}" if grid else ""
    windows = certainty.get("eval_windows")
    how += f"; each perplexity on {windows} evaluation windows" if windows is not None else ""
    gap = certainty.get("gap_pp")
    if gap is not None:
        unit = "percentage point" if float(gap) == 1 else "percentage points"
        how += f"; the last passing and the first failing step are {float(gap):g} {unit} apart"
    how += "."
    caveat = None
    if certainty.get("ppl_monotone") is False:
        caveat = ("Perplexity did not grow steadily with sparsity along the search, so a setting above this edge "
                  "might also pass: read the edge as approximate.")
    elif gap is None and frontier is not None:
        caveat = f"Even the top of the searched range passed: the edge is at or above {frontier['sparsity']:.0%}."
    if not frontier:
        return {"found": False, "sparsity": None, "ppl": None, "increase": None, "corpus": None, "dense_ppl": None,
                "how": how, "caveat": caveat}
    # The figures of the corpus where the edge is worst (searches before several corpora: their one corpus).
    corpus = frontier.get("corpus") or (result.get("budget") or {}).get("corpus")
    dense = frontier.get("dense_ppl") if frontier.get("dense_ppl") is not None else result.get("dense_ppl")
    return {"found": True, "sparsity": float(frontier["sparsity"]), "ppl": float(frontier["ppl"]),
            "increase": float(frontier["increase"]) if frontier.get("increase") is not None else None,
            "corpus": corpus, "dense_ppl": dense, "how": how, "caveat": caveat}

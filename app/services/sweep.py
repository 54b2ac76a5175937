"""Curves: the sweep job spec and its form, the points of a running sweep, and finished sweeps merged.

Finished sweeps of the same model and protocol are merged (`pruning_core.analysis.sweep_results.merge_sweeps`),
so running a second method adds its line to the same chart and the Summary recommends from all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from app.services.choices import ALLOCATIONS, METHODS, STRUCTURES
from app.services.forms import PageForm, choices_in
from app.services.jobs import recent_results
from app.services.models import get_model
from app.services.settings import protocol_of, with_executor
from pruning_core.analysis.sweep import SweepSpec
from pruning_core.analysis.sweep_results import merge_sweeps
from pruning_core.store import Store, content_hash

#: The sparsities the Curves form offers (unstructured points).
SPARSITY_CHOICES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PROPAGATIONS = ("pruned", "dense")


def sweep_spec(settings: dict, methods, structures, sparsities, propagation: str = "pruned",
               allocations=("uniform",)) -> dict:
    """A sweep job spec (`SweepSpec.to_dict()`), validated before anything runs.

    allocations: allocator names (`choices.ALLOCATIONS`), one more axis of the grid: each unstructured point is
    pruned with that allocator's plan for its target sparsity."""
    spec = SweepSpec(model=settings["model"], methods=tuple(methods), structures=tuple(structures),
                     sparsities=tuple(float(s) for s in sparsities),
                     eval_corpora=tuple(settings["eval_corpora"]), propagation=propagation,
                     protocol=protocol_of(settings), allocations=tuple(allocations or ("uniform",)))
    return with_executor(spec.validate().to_dict())


@dataclass
class SweepForm(PageForm):
    """The Curves form: widgets "curves_<field>"."""

    PREFIX: ClassVar[str] = "curves_"
    methods: tuple = ("magnitude", "wanda")
    structures: tuple = ("unstructured",)
    sparsities: tuple = (0.5,)
    propagation: str = "pruned"
    allocations: tuple = ("uniform",)

    def to_spec(self, settings: dict) -> dict:
        """The sweep job spec of these choices (`sweep_spec`); raises PruneScopeError for a bad choice."""
        return sweep_spec(settings, self.methods, self.structures, self.sparsities, self.propagation,
                          self.allocations)

    @classmethod
    def from_spec(cls, spec: Optional[dict]) -> dict:
        """The widget values that make a sweep job's spec (the page re-attaching to it shows how it was made)."""
        if not spec:
            return {}
        values = {"methods": [m for m in spec.get("methods", ()) if m in METHODS],
                  "structures": [s for s in spec.get("structures", ()) if s in STRUCTURES],
                  "sparsities": choices_in(SPARSITY_CHOICES, spec.get("sparsities", ())),
                  "allocations": [a for a in spec.get("allocations") or ("uniform",) if a in ALLOCATIONS]}
        values = {name: value for name, value in values.items() if value}
        if spec.get("propagation") in PROPAGATIONS:
            values["propagation"] = spec["propagation"]
        return cls.widgets(**values)


def partial_sweep_results(spec: dict) -> Optional[dict]:
    """The sweep points stored so far for a running sweep job, as a results dict (None if none yet).

    Uses the run key the sweep itself writes: content_hash({"sweep": spec, "model": weight fingerprint}).
    """
    loaded = get_model(spec["model"])
    run_key = content_hash({"sweep": SweepSpec.from_dict(spec).to_dict(), "model": loaded.fingerprint})
    payloads = Store().results_for_run(run_key)
    if not payloads:
        return None
    dense = next((p for p in payloads if "method" not in p), {"ppl": {}})
    points = [p for p in payloads if "method" in p]
    return {"model": loaded.describe(), "dense": dense, "points": points,
            "protocol": {**spec.get("protocol", {}), "propagation": spec.get("propagation")}}


def merged_sweeps(model: str, first: Optional[dict] = None) -> Optional[dict]:
    """Every finished sweep of the model source `model` with the newest one's model and protocol, merged
    (`merge_sweeps`); with `first` (a sweep result just finished), that one's model and protocol, and its
    points before any other's. None when there is no sweep."""
    finished = [r["result"] for r in recent_results("sweep", model)]
    if first is not None:
        finished = [first] + [r for r in finished if r is not first]
    return merge_sweeps(finished)

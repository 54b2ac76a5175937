"""The registry of allocators: each turns a global target sparsity into a `SparsityPlan` for one model.

An allocator is a name, what it reads (`needs`: nothing, the dense input statistics the walk caches, or a
sensitivity map) and a pure function. Add one here, nowhere else; callers (sweep, budget search, CLI, pages)
only see `ALLOCATORS`, `get_allocator` and `make_plan`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from pruning_core.allocation.owl import allocate_owl
from pruning_core.plan import SparsityPlan, module_sizes
from pruning_core.allocation.sensitivity_guided import allocate_by_sensitivity
from pruning_core.errors import ConfigError


@dataclass
class AllocationInputs:
    """What an allocator may read. Every field but `loaded` is optional; an allocator says which it needs.

    loaded: the model (`LoadedModel`), left unchanged. statistics: dense input statistics (`prune.Statistics`)
    of the calibration set. sensitivity: a sensitivity result (`analysis.sensitivity.compute_sensitivity`'s
    maps at two or more sparsities). options: allocator settings (e.g. {"M": 5, "lambda": 0.08}).
    """

    loaded: Any
    statistics: Any = None
    sensitivity: Optional[Mapping] = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Allocator:
    """A registered allocator. needs: "none" | "act_sq" (dense input statistics) | "sensitivity"."""

    name: str
    needs: str
    allocate: Callable[[AllocationInputs, float], SparsityPlan]
    description: str


def _uniform(inputs: AllocationInputs, target: float) -> SparsityPlan:
    sizes = module_sizes(inputs.loaded)
    return SparsityPlan.uniform(len(sizes), inputs.loaded.adapter.module_kinds, target)


UNIFORM = Allocator("uniform", "none", _uniform, "the same sparsity for every module")

OWL = Allocator("owl", "act_sq", allocate_owl,
                "outlier-weighted layerwise sparsity: layers with more activation outliers keep more weights "
                "(options M, lambda)")
SENSITIVITY = Allocator("sensitivity", "sensitivity", allocate_by_sensitivity,
                        "per-module sparsities minimising the summed loss increase a sensitivity map predicts "
                        "(maps at two or more sparsities)")

ALLOCATORS: dict[str, Allocator] = {a.name: a for a in (UNIFORM, OWL, SENSITIVITY)}


def get_allocator(name: str) -> Allocator:
    """The registered allocator called `name`; an unknown name lists the known ones."""
    try:
        return ALLOCATORS[name.strip().lower()]
    except KeyError:
        raise ConfigError(f"Unknown allocation '{name}'; choose one of {', '.join(ALLOCATORS)}.") from None


def make_plan(name: str, inputs: AllocationInputs, target: float) -> SparsityPlan:
    """The plan allocator `name` makes for global target sparsity `target` (by parameters)."""
    allocator = get_allocator(name)
    if allocator.needs == "act_sq" and inputs.statistics is None:
        raise ConfigError(f"Allocation '{allocator.name}' needs calibration statistics; choose a calibration "
                          "corpus.")
    if allocator.needs == "sensitivity" and not inputs.sensitivity:
        raise ConfigError(f"Allocation '{allocator.name}' needs a sensitivity map at two or more sparsities; "
                          "compute one on the Sensitivity page (or `prunescope sensitivity`) first.")
    return allocator.allocate(inputs, float(target))

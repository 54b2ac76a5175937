"""Allocation: the plan an allocator makes for a global target (cached), an edited plan and its numbers.

An allocator turns a global target sparsity into a sparsity plan (one sparsity per layer x module kind); its
global sparsity is counted over parameters, the one figure pages and files report. Which stored sensitivity
map the `sensitivity` allocator reads is the library's rule (`analysis.stored_maps.sensitivity_for_allocation`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Optional

import streamlit as st

from app.services.forms import PageForm
from app.services.models import get_model, identity_key
from app.services.settings import protocol_dict
from pruning_core.allocation import allocators as _allocators
from pruning_core.analysis import stored_maps
from pruning_core.plan import SparsityPlan, module_sizes, plan_for
from pruning_core.protocol import Protocol
from pruning_core.statistics_cache import cached_statistics
from pruning_core.store import Store, home_dir


@dataclass
class AllocationForm(PageForm):
    """The Allocation form: widgets "alloc_<field>" (no job: the plan is made on the page, cached)."""

    PREFIX: ClassVar[str] = "alloc_"
    allocator: str = "uniform"
    target: float = 0.5


def allocation_needs(name: str) -> str:
    """What allocator `name` reads: "none", a statistics kind such as "act_sq" (one calibration pass, cached),
    or "sensitivity" (a stored sensitivity map at two or more sparsities)."""
    return _allocators.get_allocator(name).needs


def sensitivity_for_allocation(model: str) -> Optional[dict]:
    """The stored sensitivity result the `sensitivity` allocator reads for `model`: {"id", "result", "label"},
    or None (`pruning_core.analysis.stored_maps.sensitivity_for_allocation`)."""
    return stored_maps.sensitivity_for_allocation(Store(), model)


def _plan_numbers(loaded, plan: SparsityPlan) -> dict:
    """{"global_sparsity", "layer_sparsity"}: a plan's global sparsity and each layer's, over parameters."""
    sizes = module_sizes(loaded)
    return {"global_sparsity": plan.global_sparsity(sizes),
            "layer_sparsity": [plan.layer_mean(i, s) for i, s in enumerate(sizes)]}


@st.cache_data(show_spinner=False, max_entries=64)
def _allocation_plan(model: str, identity_key: str, protocol_json: str, allocator: str, target: float,
                     sensitivity_id: Optional[str], home: str) -> dict:  # noqa: ARG001 - identity/home: cache key
    loaded = get_model(model)
    protocol = Protocol(**json.loads(protocol_json))
    needs = allocation_needs(allocator)
    statistics = sensitivity = None
    if needs == "sensitivity":
        found = sensitivity_for_allocation(model)
        sensitivity = found["result"] if found and found["id"] == sensitivity_id else None
    elif needs != "none":  # dense input statistics: from the store when a sweep or an earlier plan made them
        statistics = cached_statistics(loaded, protocol, needs, Store())
    plan = _allocators.make_plan(allocator, _allocators.AllocationInputs(loaded, statistics=statistics,
                                                                         sensitivity=sensitivity), target)
    return {"plan": plan.to_dict(), **_plan_numbers(loaded, plan), "sensitivity_id": sensitivity_id}


def allocation_plan(settings: dict, allocator: str, target: float) -> dict:
    """The plan allocator `allocator` makes for global target sparsity `target` (by parameters) on the Setup
    model, with the Setup calibration (`pruning_core.allocation.allocators.make_plan`).

    Returns {"plan" (`SparsityPlan.to_dict()`), "global_sparsity" (the plan's, by parameters, from the core),
    "layer_sparsity" (each layer's, by parameters), "sensitivity_id" (the sensitivity job read, or None)}.
    Cached per (model file, protocol, allocator, target, sensitivity job). An allocator that reads statistics
    costs one calibration pass the first time (cached on disk for every later plan and sweep); one that reads
    a sensitivity map uses `sensitivity_for_allocation`'s. Raises ConfigError saying what is missing.
    """
    model = settings["model"]
    found = sensitivity_for_allocation(model) if allocation_needs(allocator) == "sensitivity" else None
    return _allocation_plan(model, identity_key(model),
                            json.dumps(protocol_dict(settings), sort_keys=True), allocator, round(float(target), 6),
                            found["id"] if found else None, str(home_dir()))


def plan_facts(settings: dict, plan: dict) -> dict:
    """{"global_sparsity", "layer_sparsity"}: a plan's (an edited one's) global sparsity and each layer's,
    counted over parameters on the Setup model (`SparsityPlan.global_sparsity(module_sizes(loaded))`).
    Raises ConfigError when the plan does not fit the model or holds a value outside [0, 0.99]."""
    loaded = get_model(settings["model"])
    return _plan_numbers(loaded, plan_for(loaded, SparsityPlan.from_dict(plan)))


def edited_plan(base: dict, rows: list[dict]) -> dict:
    """The plan dict of an edited table: `rows` = [{"layer", <kind>: sparsity, ...}] (the What-if editor's),
    over `base` (the plan it started from). Unchanged: `base` itself; changed: allocator "edited", with
    "edited_from" naming the allocator it started from (as `SparsityPlan.edited` records it)."""
    kinds = list(base["kinds"])
    values = [list(row) for row in base["values"]]
    for row in rows:
        layer = int(row["layer"])
        for j, kind in enumerate(kinds):
            if row.get(kind) is not None and 0 <= layer < len(values):
                values[layer][j] = float(row[kind])
    if values == [[float(v) for v in row] for row in base["values"]]:
        return base
    settings = dict(base.get("settings") or {})
    if base.get("allocator") != "edited":
        settings["edited_from"] = base.get("allocator")
    return {**base, "values": values, "allocator": "edited", "settings": settings}


def plan_origin(plan: dict) -> str:
    """The allocator a plan came from: its own, or for an edited plan the one it was edited from."""
    return str((plan.get("settings") or {}).get("edited_from") or plan.get("allocator") or "uniform")

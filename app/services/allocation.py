"""Allocation: the plan an allocator makes for a global target (at once, or as a short job when it reads
calibration statistics), an edited plan and its numbers.

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
from pruning_core.plan import SparsityPlan, plan_for
from pruning_core.protocol import Protocol
from pruning_core.allocation.plan_job import allocation_plan as allocation_plan_of, plan_summary
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


@st.cache_data(show_spinner=False, max_entries=64)
def _plan_in_process(model: str, identity_key: str, protocol_json: str, allocator: str, target: float,
                     sensitivity_id: Optional[str], home: str) -> dict:  # noqa: ARG001 - identity/home: cache key
    found = sensitivity_for_allocation(model) if sensitivity_id else None
    sensitivity = found["result"] if found and found["id"] == sensitivity_id else None
    made = allocation_plan_of(get_model(model), Protocol(**json.loads(protocol_json)), allocator, target,
                              sensitivity=sensitivity)
    return {**made, "sensitivity_job": sensitivity_id}


def plan_spec(settings: dict, allocator: str, target: float) -> dict:
    """The spec of the short job that makes allocator `allocator`'s plan for global target `target` on the Setup
    model and calibration (`pruning_core.allocation.plan_job.run_plan_job`); it names the sensitivity job a
    "sensitivity" allocator reads."""
    model = settings["model"]
    found = sensitivity_for_allocation(model) if allocation_needs(allocator) == "sensitivity" else None
    return {"model": model, "protocol": protocol_dict(settings), "allocation": allocator,
            "target": round(float(target), 6), "sensitivity_job": found["id"] if found else None}


def plan_now(settings: dict, allocator: str, target: float) -> Optional[dict]:
    """The plan at once when making it runs no model forward (an allocator that reads nothing or a stored
    sensitivity map), else None: the page then runs `plan_spec`'s short job (one calibration pass the first
    time, with progress and cancel; cached on disk for every later plan and sweep).

    Returns {"plan" (`SparsityPlan.to_dict()`), "global_sparsity" (the plan's, by parameters, from the core),
    "layer_sparsity" (each layer's, by parameters), "sensitivity_job" (the sensitivity job read, or None)}, as
    the job does. Raises ConfigError saying what is missing."""
    if allocation_needs(allocator) not in ("none", "sensitivity"):
        return None
    spec = plan_spec(settings, allocator, target)
    return _plan_in_process(spec["model"], identity_key(spec["model"]), json.dumps(spec["protocol"], sort_keys=True),
                            allocator, spec["target"], spec["sensitivity_job"], str(home_dir()))


def plan_facts(settings: dict, plan: dict) -> dict:
    """{"global_sparsity", "layer_sparsity"}: a plan's (an edited one's) global sparsity and each layer's,
    counted over parameters on the Setup model (`SparsityPlan.global_sparsity(module_sizes(loaded))`).
    Raises ConfigError when the plan does not fit the model or holds a value outside [0, 0.99]."""
    loaded = get_model(settings["model"])
    made = plan_summary(loaded, plan_for(loaded, SparsityPlan.from_dict(plan)))
    return {"global_sparsity": made["global_sparsity"], "layer_sparsity": made["layer_sparsity"]}


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

"""Allocation: where the zeros go. An allocator turns a global target sparsity into a plan (one sparsity per
layer x module kind); the page shows the plan as a heatmap beside the sensitivity map it can be read against,
with the plan's global sparsity counted over parameters (the figure every page and file reports).

uniform needs nothing; allocators that read calibration statistics cost one calibration pass the first time
(cached on disk for later plans and sweeps); the sensitivity allocator reads a stored map at two or more
sparsities (Sensitivity page). Try a plan on the What-if page, or sweep allocations on the Curves page.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable on its own: `streamlit run pages/allocation.py`
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from app import charts, state, widgets  # noqa: E402
from app.services import allocation, choices, navigation, sensitivity  # noqa: E402
from app.services.allocation import AllocationForm  # noqa: E402

#: The form's widgets and their first values (seeded by `state.seed_form`, so leaving the page keeps them).
FORM = AllocationForm.widget_defaults()

settings = widgets.page_start(
    "Allocation",
    "Where should the zeros go? An allocator spreads a global sparsity over layers and module kinds: "
    "<b>brighter cells are pruned harder</b>. Compare the plan with the sensitivity map beside it.",
)
state.seed_form("allocation", FORM)
if st.session_state.get("alloc_allocator") not in choices.ALLOCATIONS:
    st.session_state["alloc_allocator"] = "uniform"

with st.container(border=True):
    c1, c2 = st.columns([2, 3])
    allocator = c1.selectbox("Allocator", choices.ALLOCATIONS, key="alloc_allocator",
                             help=choices.allocation_help())
    target = c2.slider("Global target sparsity", 0.05, 0.95, step=0.05, key="alloc_target", format="%.2f",
                       help="Share of the pruned linears' weights removed, counted over parameters.")
    needs = allocation.allocation_needs(allocator)
    cost = ("" if needs in ("none", "sensitivity") else  # the registry's description names a map it reads
            "; it reads calibration statistics (one calibration pass the first time, then cached)")
    st.caption(f"**{allocator}**: {choices.ALLOCATION_DESCRIPTIONS.get(allocator, '')}{cost}.")
state.remember_form("allocation", FORM)

source = widgets.guarded(allocation.sensitivity_for_allocation, settings["model"]) if needs == "sensitivity" else None
if needs == "sensitivity" and source is None:
    st.info("This allocator reads a sensitivity map at two or more sparsities: compute one on the "
            "**Sensitivity** page (choose two sparsities, e.g. 40 % and 60 %), then come back.",
            icon=":material/info:")
    st.stop()

made = widgets.allocation_plan(settings, allocator, target, key="alloc_plan_job")
if made is None:
    st.stop()
plan, global_sparsity = made["plan"], made["global_sparsity"]

st.markdown(f"**{allocator}** plan for a **{target:.0%}** target: **{global_sparsity:.1%}** of the pruned linears' "
            f"weights removed (counted over parameters); layers range from **{min(made['layer_sparsity']):.1%}** "
            f"to **{max(made['layer_sparsity']):.1%}**.")
if source is not None:
    st.caption(f"Made from the {source['label']}.")

# The sensitivity map to read the plan against: the Summary's choice, nearest the target (the library's rule).
found = widgets.guarded(sensitivity.map_to_show, settings["model"], float(target))

left, right = st.columns(2, gap="medium")
charts.show(charts.plan_heatmap_chart(plan, global_sparsity), key="alloc_plan", container=left,
            alt="Sparsity plan: decoder layers by module kinds")
if found:
    chosen, verdict = found
    charts.show(charts.heatmap_chart(chosen), key="alloc_sensitivity", container=right,
                alt="Sensitivity heatmap: decoder layers by module kinds")
    right.caption(verdict["label"])
else:
    right.info("No sensitivity map yet: compute one on the **Sensitivity** page to see whether the plan spares "
               "the modules the model needs.", icon=":material/info:")

if st.button("Try this plan on the What-if page", key="alloc_to_whatif", icon=":material/science:",
             help="Opens the What-if page with this plan in its table, ready to edit and run."):
    navigation.send_plan_to_whatif(allocator, target, plan)
st.caption("Compare allocations across sparsities on the **Curves** page (choose them under Allocations).")

"""Every hand-off between pages, in one place: what one page leaves in the session for another, and the switch.

A hand-off writes the receiving page's widget values (or a note it reads once) into `st.session_state`, then
opens the page with `st.switch_page`. A page run on its own (`streamlit run pages/x.py`, AppTest) has no menu
to switch in: the hand-off stays in the session and a note says where to go.

  * Summary -> Export: the recommended setting pre-fills the Export form (`send_to_export`, `take_export_prefill`);
  * Summary -> Recovery: the recommended setting is preselected (`send_to_recovery`, `take_recovery_prefill`);
  * Allocation -> What-if: the plan fills the What-if table (`send_plan_to_whatif`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import streamlit as st
from streamlit.errors import StreamlitAPIException

from app.services.export import NEW_SETTING, ExportForm
from app.services.recovery import RecoveryForm, recovery_source
from app.services.what_if import WhatIfForm

PAGES = Path(__file__).resolve().parents[2] / "pages"
#: Session keys of the hand-offs the receiving page reads once.
EXPORT_PREFILL_KEY = "export_prefill"
RECOVERY_PREFILL_KEY = "recovery_prefill"


def _open(page: str, note: str, icon: str) -> None:
    """Switch to `pages/<page>`; outside the multipage app, show `note` (where to go) instead."""
    try:
        st.switch_page(str(PAGES / page))
    except StreamlitAPIException:
        st.info(note, icon=icon)


def send_to_export(point: dict) -> None:
    """Hand a recommended sweep point to the Export page (pre-filled there: method, structure, sparsity as the
    slider holds it, propagation) and open it."""
    st.session_state[EXPORT_PREFILL_KEY] = recovery_source(point)
    _open("export.py", "The recommendation is pre-filled on the Export page; open it from the menu.",
          ":material/download:")


def take_export_prefill(session) -> Optional[dict]:
    """Seed the Export form's widget keys with their first values, and move a Summary hand-off into them, once.

    Call before the form's widgets are drawn (the widgets then take no default of their own, so Streamlit
    never sees two defaults). Returns the hand-off (for a note on the page) or None.
    """
    for key, value in ExportForm.widget_defaults().items():
        if key not in session:
            session[key] = value
    prefill = session.get(EXPORT_PREFILL_KEY)
    if not prefill:
        return None
    del session[EXPORT_PREFILL_KEY]
    session.update(ExportForm.widgets(**{k: v for k, v in prefill.items() if k in ExportForm.names()}))
    session["export_source"] = NEW_SETTING
    return prefill


def send_to_recovery(point: dict) -> None:
    """Hand a sweep point to the Recovery page (preselected there) and open it."""
    st.session_state[RECOVERY_PREFILL_KEY] = recovery_source(point)
    _open("recovery.py", "The setting is preselected on the Recovery page; open it from the menu.",
          ":material/healing:")


def take_recovery_prefill(session) -> Optional[dict]:
    """Move a Summary hand-off into the Recovery form's setting widgets, once; returns it (or None)."""
    handed = session.pop(RECOVERY_PREFILL_KEY, None)
    if handed:
        session.update(RecoveryForm.widgets(**handed))
    return handed


def send_plan_to_whatif(allocator: str, target: float, plan: dict) -> None:
    """Open the What-if page with `plan` (made by `allocator` for `target`) in its table, ready to edit and run."""
    st.session_state.update(WhatIfForm.widgets(per_layer=True, start=allocator, sparsity=float(target),
                                               structure="unstructured", plan_seed=plan))
    _open("what_if.py", "The plan is waiting on the What-if page; open it from the menu.", ":material/science:")

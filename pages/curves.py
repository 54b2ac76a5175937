"""Curves: perplexity against sparsity for each method and structure, with the dense model as reference.
With several allocations (uniform, owl, sensitivity), each method has a line per allocation, dashed by allocation.

Settings in, one sweep job out; the chart fills in as points finish (they are read from the store while
the job runs) and the final numbers come from the job's result. Finished sweeps of the same model and
protocol are merged, so running a second method adds its line to the same chart.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable on its own: `streamlit run pages/curves.py`
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from app import charts, services, state, widgets  # noqa: E402
from app.charts import corpora_in, curve_table_rows  # noqa: E402

SPARSITY_CHOICES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
#: The form's widgets and their first values (seeded by `state.seed_form`, so leaving the page keeps them).
FORM = {"curves_methods": ["magnitude", "wanda"], "curves_structures": ["unstructured"],
        "curves_sparsities": [0.5], "curves_propagation": "pruned", "curves_allocations": ["uniform"]}


def form_from_spec(spec) -> dict:
    """The form values that make a sweep job's spec (the page re-attaching to it shows how it was made)."""
    if not spec:
        return {}
    values = {"curves_methods": [m for m in spec.get("methods", ()) if m in services.METHODS],
              "curves_structures": [s for s in spec.get("structures", ()) if s in services.STRUCTURES],
              "curves_sparsities": [c for c in SPARSITY_CHOICES
                                    if any(abs(c - float(s)) < 1e-9 for s in spec.get("sparsities", ()))]}
    values["curves_allocations"] = [a for a in spec.get("allocations") or ("uniform",) if a in services.ALLOCATIONS]
    values = {key: value for key, value in values.items() if value}
    if spec.get("propagation") in ("pruned", "dense"):
        values["curves_propagation"] = spec["propagation"]
    return values


settings = widgets.page_start(
    "Curves",
    "How much worse does the model get as more weights are removed? Each line is a pruning method; the "
    "dashed line is the unpruned model. <b>Lower perplexity is better.</b>",
)
state.seed_form("sweep", FORM, lambda: form_from_spec(widgets.followed_spec("sweep", settings["model"])))

with st.container(border=True):
    c1, c2, c3 = st.columns([2, 2, 3])
    methods = c1.multiselect("Methods", services.METHODS, key="curves_methods",
                             help="magnitude: smallest |W|; Wanda: |W|·‖X‖ per output row; SparseGPT: "
                                  "second-order with weight updates (slowest).")
    structures = c2.multiselect("Structures", services.STRUCTURES, key="curves_structures",
                                help="unstructured: any weights; 2:4 and 4:8 keep N of every M (always 50 %), "
                                     "the pattern GPUs can accelerate.")
    sparsities = c3.multiselect("Sparsities (unstructured)", SPARSITY_CHOICES, key="curves_sparsities",
                                format_func=lambda s: f"{s:.0%}")
    c4, c6, c5 = st.columns([2, 2, 3])
    propagation = c4.radio("Statistics from", ["pruned", "dense"], key="curves_propagation", horizontal=True,
                           format_func=lambda p: {"pruned": "pruned layers (papers)",
                                                  "dense": "dense model (faster)"}[p],
                           help="Propagation: where each layer's input statistics come from. pruned: each layer "
                                "sees the already-pruned earlier layers, as in the papers; dense: statistics are "
                                "collected once on the unpruned model and reused for every point.")
    allocations = c6.multiselect("Allocations", services.ALLOCATIONS, key="curves_allocations",
                                 help="How each sparsity is spread over layers and modules (unstructured points; "
                                      "each allocation adds a line per method, dashed by allocation): "
                                      + "; ".join(f"{n}: {t}" for n, t in services.ALLOCATION_DESCRIPTIONS.items()))
    spec = None
    try:
        spec = services.sweep_spec(settings, methods, structures, sparsities, propagation, allocations)
    except Exception as error:  # noqa: BLE001 - bad choices: say what to fix, keep the page
        widgets.show_error(error)
    with c5:
        widgets.estimate_line("sweep", settings, spec)
    run = st.button("Run sweep", key="curves_run", type="primary", icon=":material/play_arrow:",
                    disabled=spec is None)

state.remember_form("sweep", FORM)

if run and spec is not None:
    widgets.start_job("sweep", spec)

job_id = widgets.attach_job("sweep", spec, settings["model"])


def draw(results: dict, prefix: str, partial: bool = False) -> None:
    """The curve chart for the chosen corpus, the table and the CSV download."""
    corpora = corpora_in(results)
    if not corpora:
        return
    top1, top2 = st.columns([3, 1])
    corpus = top1.radio("Evaluation corpus", corpora, key=f"{prefix}_corpus", horizontal=True) \
        if len(corpora) > 1 else corpora[0]
    log_y = top2.toggle("Log scale", value=True, key=f"{prefix}_log",
                        help="Perplexity on a log axis (the default): a broken point at high sparsity does not "
                             "flatten the other lines. Off: a linear axis.")
    charts.show(charts.curves_chart(results, corpus, log_y=log_y), key=f"{prefix}_chart",
                alt=f"Perplexity against sparsity on {corpus}")
    if partial:
        return
    rows = curve_table_rows(results)
    st.dataframe(charts.curve_table(results), hide_index=True, width="stretch", key=f"{prefix}_table")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    st.download_button("Download CSV", buffer.getvalue(), file_name="prunescope-curves.csv", mime="text/csv",
                       key=f"{prefix}_csv", icon=":material/download:")


def on_progress(status: dict) -> None:
    partial = widgets.guarded(services.partial_sweep_results, status["spec"])
    if partial and partial.get("points"):
        st.caption(f"{len(partial['points'])} point(s) finished so far:")
        draw(partial, "curves_partial", partial=True)


status = widgets.job_panel("sweep", job_id, on_progress, spec=spec)
finished = [r["result"] for r in (widgets.guarded(services.recent_results, "sweep", settings["model"]) or [])]
if status is not None and status.get("state") == "done" and status.get("result"):
    # This run first, then earlier finished sweeps of the same model and protocol.
    finished = [status["result"]] + [r for r in finished if r is not status["result"]]
merged = services.merge_sweeps(finished)
if merged and merged.get("points"):
    st.subheader("Perplexity vs sparsity")
    draw(merged, "curves")
elif status is None or not services.is_active(status):
    st.info("No curve yet: choose methods and sparsities above and press **Run sweep**. The estimate above "
            "says how long it takes on this machine.", icon=":material/info:")

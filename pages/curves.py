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

from app import charts, state, widgets  # noqa: E402
from app.charts import corpora_in, curve_table_rows  # noqa: E402
from app.services import choices, jobs, sweep  # noqa: E402
from app.services import corpora as corpora_service  # noqa: E402
from app.services.sweep import SweepForm  # noqa: E402

#: The form's widgets and their first values (seeded by `state.seed_form`, so leaving the page keeps them).
FORM = SweepForm.widget_defaults()


settings = widgets.page_start(
    "Curves",
    "How much worse does the model get as more weights are removed? Each line is a pruning method; the "
    "dashed line is the unpruned model. <b>Lower perplexity is better.</b>",
)
widgets.seed_form_from_job("sweep", FORM, SweepForm, settings["model"])

with st.container(border=True):
    c1, c2, c3 = st.columns([2, 2, 3])
    methods = c1.multiselect("Methods", choices.METHODS, key="curves_methods",
                             help="magnitude: smallest |W|; Wanda: |W|·‖X‖ per output row; SparseGPT: "
                                  "second-order with weight updates (slowest).")
    structures = c2.multiselect("Structures", choices.STRUCTURES, key="curves_structures",
                                help="unstructured: any weights; 2:4 and 4:8 keep N of every M (always 50 %), "
                                     "the pattern GPUs can accelerate.")
    sparsities = c3.multiselect("Sparsities (unstructured)", sweep.SPARSITY_CHOICES, key="curves_sparsities",
                                format_func=lambda s: f"{s:.0%}")
    c4, c6, c5 = st.columns([2, 2, 3])
    propagation = c4.radio("Statistics from", sweep.PROPAGATIONS, key="curves_propagation", horizontal=True,
                           format_func=lambda p: {"pruned": "pruned layers (papers)",
                                                  "dense": "dense model (faster)"}[p],
                           help="Propagation: where each layer's input statistics come from. pruned: each layer "
                                "sees the already-pruned earlier layers, as in the papers; dense: statistics are "
                                "collected once on the unpruned model and reused for every point.")
    allocations = c6.multiselect("Allocations", choices.ALLOCATIONS, key="curves_allocations",
                                 help="How each sparsity is spread over layers and modules (unstructured points; "
                                      "each allocation adds a line per method, dashed by allocation): "
                                      + choices.allocation_help())
    # Bad choices: the error says what to fix, and the page stays.
    spec = widgets.guarded(lambda: SweepForm(methods, structures, sparsities, propagation,
                                   allocations).to_spec(settings))
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
    corpus = top1.radio("Evaluation corpus", corpora, key=f"{prefix}_corpus", horizontal=True,
                        format_func=corpora_service.corpus_label) if len(corpora) > 1 else corpora[0]
    log_y = top2.toggle("Log scale", value=True, key=f"{prefix}_log",
                        help="Perplexity on a log axis (the default): a broken point at high sparsity does not "
                             "flatten the other lines. Off: a linear axis.")
    charts.show(charts.curves_chart(results, corpus, log_y=log_y), key=f"{prefix}_chart",
                alt=f"Perplexity against sparsity on {corpora_service.corpus_label(corpus)}")
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
    partial = widgets.guarded(sweep.partial_sweep_results, status["spec"])
    if partial and partial.get("points"):
        st.caption(f"{len(partial['points'])} point(s) finished so far:")
        draw(partial, "curves_partial", partial=True)


status = widgets.job_panel("sweep", job_id, on_progress, spec=spec)
# This run first (when it just finished), then earlier finished sweeps of the same model and protocol.
just_done = status.get("result") if status is not None and status.get("state") == "done" else None
merged = widgets.guarded(sweep.merged_sweeps, settings["model"], just_done or None)
if merged and merged.get("points"):
    st.subheader("Perplexity vs sparsity")
    draw(merged, "curves")
elif status is None or not jobs.is_active(status):
    st.info("No curve yet: choose methods and sparsities above and press **Run sweep**. The estimate above "
            "says how long it takes on this machine.", icon=":material/info:")

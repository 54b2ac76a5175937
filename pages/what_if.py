"""What-if: try one pruning setting and see what it costs and what it really saves.

Perplexity dense vs pruned, the bytes of the files the dense and the pruned model are saved as (measured, with
the runtimes that load them), an honest note on speed, and text from the dense and the pruned model side by side
for the same prompt (greedy decoding).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable on its own: `streamlit run pages/what_if.py`
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from app import state, widgets  # noqa: E402
from app.formats import format_bytes  # noqa: E402
from app.services import allocation, choices, what_if  # noqa: E402
from app.services.what_if import WhatIfForm  # noqa: E402

#: The form's widgets and their first values (seeded by `state.seed_form`, so leaving the page keeps them and a
#: reload or a second tab shows the form that made the what-if shown); see `WhatIfForm`.
FORM = WhatIfForm.widget_defaults()

settings = widgets.page_start(
    "What-if",
    "Try one setting: how much worse does the pruned model get, what do its saved files weigh in the formats "
    "runtimes load, and how does its text compare with the original's?",
)
widgets.seed_form_from_job("whatif", FORM, WhatIfForm, settings["model"])
if st.session_state.get("whatif_start") not in choices.ALLOCATIONS:  # an allocator gone from the registry
    st.session_state["whatif_start"] = "uniform"


def plan_editor(sparsity: float):
    """The plan table: an allocator's plan for `sparsity` (or the followed job's plan), one row per layer and
    one column per module kind, editable; returns the edited plan (dict form) or None when none could be made."""
    # Half the width, and a caption under it: the table's toolbar (shown on hover, above the table's right end)
    # was drawn over a full-width select box's arrow.
    start = st.columns(2)[0].selectbox("Start from", choices.ALLOCATIONS, key="whatif_start",
                                       help="The allocator whose plan for the sparsity above fills the table: "
                                            + choices.allocation_help())
    seed = st.session_state.get("whatif_plan_seed")
    if seed and allocation.plan_origin(seed) == start and seed.get("target") is not None \
            and abs(float(seed["target"]) - sparsity) < 1e-9:
        base = seed  # the plan of the run shown (after a reload), edits included
    else:
        made = widgets.allocation_plan(settings, start, sparsity, key="whatif_plan_job")
        if made is None:
            return None
        base = made["plan"]
        old_layers = st.session_state.get("whatif_layer_seed") or {}
        if start == "uniform" and old_layers:  # a run made before plans: its per-layer values
            base = allocation.edited_plan(base, [{"layer": int(layer), **{k: float(v) for k in base["kinds"]}}
                                               for layer, v in old_layers.items()])
    kinds = list(base["kinds"])
    rows = [{"layer": i, **dict(zip(kinds, row))} for i, row in enumerate(base["values"])]
    digest = hashlib.sha1(json.dumps(base["values"]).encode()).hexdigest()[:10]  # a new base: a fresh table
    st.caption("One row per decoder layer, one column per module kind: edit any cell (0 to 0.99).")
    column = st.column_config.NumberColumn(min_value=0.0, max_value=0.99, step=0.05, format="%.2f")
    edited = st.data_editor(rows, key=f"whatif_plan_{digest}", hide_index=True, disabled=["layer"],
                            column_config={kind: column for kind in kinds},
                            height=min(400, 38 + 35 * len(rows)))
    plan = allocation.edited_plan(base, list(edited))
    facts = widgets.guarded(allocation.plan_facts, settings, plan)
    if facts is None:
        return None
    changed = " (edited)" if plan.get("allocator") == "edited" else ""
    st.caption(f"This plan{changed} removes **{facts['global_sparsity']:.1%}** of the pruned linears' weights "
               f"(counted over parameters); layers range from {min(facts['layer_sparsity']):.1%} to "
               f"{max(facts['layer_sparsity']):.1%}. It replaces the slider's value; the result reports the "
               "measured sparsity.")
    return plan

with st.container(border=True):
    c1, c2, c3 = st.columns(3)
    method = c1.selectbox("Method", choices.METHODS, key="whatif_method")
    structure = c2.selectbox("Structure", choices.STRUCTURES, key="whatif_structure")
    is_nm = structure != "unstructured"
    sparsity = c3.slider("Sparsity", 0.05, 0.95, step=0.05, key="whatif_sparsity", disabled=is_nm,
                         format="%.2f", help="Share of weights removed (N:M structures are always 50 %).")
    plan = None
    if not is_nm:
        per_layer = st.toggle("Set sparsity per layer and module", key="whatif_per_layer",
                              help="Start from an allocator's plan for the sparsity above (uniform, or one that "
                                   "spares sensitive layers) and edit it: e.g. spare the first layers and prune "
                                   "the middle ones more.")
        if per_layer:
            plan = plan_editor(sparsity)
    prompt = st.text_area("Prompt for the text comparison", key="whatif_prompt", height=80)
    # Bad choices: the error says what to fix, and the page stays.
    spec = widgets.guarded(lambda: WhatIfForm(method, structure, sparsity, prompt=prompt).to_spec(settings, plan))
    widgets.estimate_line("whatif", settings, spec)
    run = st.button("Try it", key="whatif_run", type="primary", icon=":material/play_arrow:", disabled=spec is None)

state.remember_form("whatif", FORM)

result = widgets.finished_result("whatif", spec, run, settings["model"],
                                 "Choose a setting above and press **Try it**.")

config = result["config"]
planned = config.get("plan")
how = f" · {allocation.plan_origin(planned)} plan" + (" (edited)" if planned.get("allocator") == "edited" else "") \
    if planned else ""
st.subheader(f"{config['method']} · {config['structure']}{how} · {result['sparsity']:.1%} of weights removed")
corpora = list(result["ppl"])
cols = st.columns(len(corpora) + 1)
for column, corpus in zip(cols, corpora):
    dense, pruned = result["dense_ppl"][corpus], result["ppl"][corpus]
    change = (pruned / dense - 1.0) * 100.0
    column.metric(f"Perplexity on {corpus}", f"{pruned:,.2f}", f"{change:+.1f} % vs dense {dense:,.2f}",
                  delta_color="inverse", help="Lower is better; the change is relative to the unpruned model.")
size = result["size"]
cols[-1].metric("Measured sparsity", f"{result['sparsity']:.1%}",
                help="Zeros / elements over all pruned linear layers.")

# Sizes and speed are worded by the claims module, exactly as the Summary page and the report word them.
gains = what_if.setting_claims(size, config["structure"], (result.get("model") or {}).get("fingerprint"))
st.subheader("Size of the saved files (whole model)")
st.caption("Measured on the files written: the dense and the pruned model saved with transformers' "
           "save_pretrained, weight files only. The model file on Setup can be smaller because it is quantised "
           "(e.g. GGUF Q4_1).")
if gains["rows"]:
    dense_b = gains["rows"][0]["bytes"] if gains["rows"][0]["what"] == "dense" else None
    size_cols = st.columns(len(gains["rows"]))
    for column, row in zip(size_cols, gains["rows"]):
        with column.container(border=True):
            saving = (1 - row["bytes"] / dense_b) * 100 if dense_b else 0.0
            st.metric(row["label"], format_bytes(row["bytes"]),
                      f"{-saving:.1f} % vs dense" if abs(saving) >= 0.05 else None, delta_color="inverse")
            st.caption(row["format"])
if gains["size"]:
    st.markdown(gains["size"])
counts = gains["counts"]
if counts:
    st.caption(f"{counts['prunable_weights']:,} prunable weights of which {counts['kept_weights']:,} kept; "
               f"{counts['other_parameters']:,} other parameters (embeddings, norms) stay dense.")
st.info(gains["speed"], icon=":material/speed:")



def side_by_side(texts: dict) -> None:
    widgets.side_by_side(texts, f"**Pruned model** ({result['sparsity']:.0%} sparse)")


st.subheader("Same prompt, dense vs pruned (greedy decoding)")
side_by_side(result["generations"])
artifact, weights_artifact = result.get("mask_artifact"), result.get("weights_artifact")
if artifact and config["method"] == "sparsegpt" and not weights_artifact:
    st.caption("To try another prompt, change it above and press **Try it**: SparseGPT also updates the kept "
               "weights, which this stored result does not hold.")
elif artifact:
    # Another prompt reuses the stored mask: a few seconds of generation instead of a whole what-if job.
    with st.form("whatif_again_form", border=False):
        again = st.text_input("Another prompt, same pruned model (no re-pruning)", key="whatif_prompt_again")
        go = st.form_submit_button("Generate", icon=":material/refresh:")
    if go and again.strip():  # generated in a short job (progress, cancel), not in the page's process
        st.session_state["whatif_generation"] = what_if.generation_spec(settings["model"], again.strip(), artifact,
                                                                        weights_artifact)
    asked = st.session_state.get("whatif_generation")
    if asked and asked.get("mask_artifact") == artifact:
        texts = widgets.short_job_result("generation", asked, key="whatif_generation_job")
        if texts:
            st.session_state["whatif_again"] = {**texts, "artifact": artifact}
    shown = st.session_state.get("whatif_again")
    if shown and shown.get("artifact") == artifact:
        side_by_side(shown)
if artifact:
    st.caption(f"Mask stored as artifact `{artifact[:12]}…` (export it from the Export page).")

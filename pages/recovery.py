"""Recovery: win back the quality pruning cost with a small masked adapter that keeps every pruned weight at zero.

The setting to recover (the Summary's recommendation when there is one, else Wanda at 50 %), the training
settings with an estimate of the training time, then, once the job is done: perplexity before and after per
corpus, the training loss and the quick evaluations against the step, the sparsity measured after merging, the
adapter's size, where its ranks went, text from the dense and the recovered model, and the report and adapter
to download.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable on its own: `streamlit run pages/recovery.py`
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from app import charts, state, widgets  # noqa: E402
from app.formats import format_seconds  # noqa: E402
from app.services import choices, corpora, navigation, recovery  # noqa: E402
from app.services.recovery import RecoveryForm  # noqa: E402

settings = widgets.page_start(
    "Recovery",
    "Win back the quality pruning cost: a short training of a small LoRA adapter on the pruned model. Its update "
    "is masked, so merging it keeps every pruned weight at exactly zero, and it ships as a small file beside the mask.",
)
measured_on = list(dict.fromkeys([*settings["eval_corpora"], *corpora.EMBEDDED_CORPORA]))
train_corpora = list(dict.fromkeys([settings["calib"], *corpora.EMBEDDED_CORPORA]))
handed = navigation.take_recovery_prefill(st.session_state)  # the Summary's "Recover quality" button
FORM = RecoveryForm.first_values(settings)
widgets.seed_form_from_job("recovery", FORM, RecoveryForm, settings["model"])
if "recovery_source_seeded" not in st.session_state:  # once per session: start from the Summary's recommendation
    st.session_state["recovery_source_seeded"] = True
    recommended = None if handed or st.session_state.get(state.FORMS, {}).get("recovery") else \
        widgets.guarded(recovery.recommended_source, settings)
    if recommended and not state.job_id("recovery"):
        st.session_state.update(RecoveryForm.widgets(**recommended))
        st.caption(":material/recommend: Preselected: the Summary's recommended setting.")
if handed:
    st.caption(":material/recommend: Preselected from the Summary: its recommended setting.")

with st.container(border=True):
    st.markdown("**The pruned setting to recover**")
    c1, c2, c3, c4 = st.columns(4)
    method = c1.selectbox("Method", choices.METHODS, key="recovery_method")
    structure = c2.selectbox("Structure", choices.STRUCTURES, key="recovery_structure")
    sparsity = c3.slider("Sparsity", 0.1, 0.9, step=0.01, key="recovery_sparsity", format="%.2f",
                         help="Fraction of the decoder linears' weights set to zero (N:M structures fix it at "
                              "their own ratio).")
    allocator = c4.selectbox("Allocation", choices.ALLOCATIONS, key="recovery_allocator",
                             help=choices.allocation_help())
    schedule = st.text_input("Step-wise sparsities before the final one", key="recovery_schedule",
                             placeholder="e.g. 0.3,0.4 (empty: prune once, then recover)",
                             help="Step-wise prune and recover: prune to each of these sparsities in turn, recovering "
                                  "between them (the steps are split evenly), then to the final sparsity above. "
                                  "Unstructured settings only.")
    st.markdown("**Training**")
    t1, t2, t3, t4 = st.columns(4)
    steps = t1.number_input("Steps", min_value=1, max_value=20_000, step=10, key="recovery_steps",
                            help="Optimizer steps of the adapter (AdamW, linear warm-up).")
    minutes = t2.number_input("Time budget (minutes)", min_value=1, max_value=600, step=1, key="recovery_minutes",
                              help="Training stops after this much time even if steps remain; the result says "
                                   "how many steps ran.")
    rank = t3.selectbox("LoRA rank", recovery.RANK_CHOICES, key="recovery_rank",
                        help="The budget of trainable parameters: what this rank on every adapted linear trains.")
    rank_choices = widgets.guarded(recovery.recovery_rank_allocations, settings["model"]) or ["uniform", "gradient"]
    if st.session_state.get("recovery_rank_allocation") not in rank_choices:  # e.g. the map it used is gone
        st.session_state["recovery_rank_allocation"] = "uniform"
    rank_allocation = t4.radio("Ranks", rank_choices, key="recovery_rank_allocation",
                               horizontal=True, help="; ".join(f"{n}: {t}" for n, t in
                                                               recovery.recovery_rank_descriptions().items()))
    e1, e2 = st.columns(2)
    eval_corpora = e1.multiselect("Measure on", measured_on, key="recovery_eval", format_func=corpora.corpus_label,
                                  help="Perplexity before and after recovery on each corpus's evaluation split; "
                                       "the charts follow these during training.")
    train_corpus = e2.selectbox("Train on", train_corpora, key="recovery_train_corpus",
                                format_func=corpora.corpus_label,
                                help="The adapter trains on this corpus's calibration split (never its "
                                     "evaluation split).")
    with st.expander("More training settings"):
        m1, m2 = st.columns(2)
        batch = m1.number_input("Windows per step", min_value=1, max_value=64, key="recovery_batch")
        seqlen = m2.selectbox("Tokens per window", recovery.SEQLEN_CHOICES, key="recovery_seqlen")
        prompt = st.text_input("Prompt for the text comparison", key="recovery_prompt")
    spec = None
    try:
        form = RecoveryForm(method, structure, sparsity, st.session_state.get("recovery_propagation") or "pruned",
                            allocator, steps, rank, rank_allocation, minutes, batch, seqlen, prompt, schedule,
                            eval_corpora, train_corpus)
        spec = form.to_spec(settings)
    except Exception as error:  # noqa: BLE001
        widgets.show_error(error)
    widgets.estimate_line("recovery", settings, spec)  # every phase: pruning, evaluations, training, samples
    run = st.button("Recover", key="recovery_run", type="primary", icon=":material/healing:", disabled=spec is None,
                    help="Runs as a job: it survives a reload, can be cancelled, and a second run resumes from the "
                         "last checkpoint.")

state.remember_form("recovery", FORM)

adapters = widgets.guarded(recovery.recovery_adapters, settings["model"])
with st.expander(f"Adapters in the store ({len(adapters or [])})"):
    if adapters:
        st.dataframe(adapters, hide_index=True, key="recovery_adapters_table")
        st.caption("Every finished recovery of this model keeps its adapter (PEFT format) in the store, newest "
                   "first; *perplexity* is the pruned model's and the merged recovered model's, per corpus "
                   "measured.")
    else:
        st.caption("No adapters of this model in the store yet: press **Recover** to train one.")

result = widgets.finished_result("recovery", spec, run, settings["model"],
                                 "Choose the setting and the training above and press **Recover**.")

words = recovery.recovery_words(result)
st.caption(f"Recovered: **{(result.get('pruned') or {}).get('description', '?')}** · {words['steps']:,} steps"
           + (" (stopped by the time budget)" if result["history"].get("stopped") == "time budget" else "")
           + f" · {format_seconds(result.get('train_seconds')).removeprefix('about ')} of training")
if words["loss_rose"]:
    st.warning(words["loss_rose"], icon=":material/trending_up:")

st.subheader("Before and after, per corpus")
st.dataframe(recovery.recovery_rows(result), hide_index=True, key="recovery_table")
st.caption("Token-level perplexity on each corpus's evaluation split, lower is better. *After recovery* is the "
           "merged model (the one that ships); *gap won back* = (pruned − after) / (pruned − dense), or – where pruning barely changed the "
           "perplexity (a share of no gap means nothing).")

figures = recovery.recovery_figures(result)
left, right = st.columns(2)
charts.show(charts.to_plotly(figures["loss"]), key="recovery_loss_chart", container=left,
            alt="Training loss against step")
charts.show(charts.to_plotly(figures["perplexity"]), key="recovery_ppl_chart", container=right,
            alt="Perplexity against step, with the dense and pruned perplexity as reference lines")
windows = (result.get("spec") or {}).get("curve_windows")
st.caption(f"During training the perplexity is a quick evaluation on the first {windows} windows of each corpus; "
           "the dashed (dense) and dotted (pruned) lines and the star (merged model) are full evaluations.")

st.subheader("The mask survives, the adapter is small")
if words["exact"]:
    st.success(words["sparsity"], icon=":material/check_circle:")
else:
    st.warning(words["sparsity"], icon=":material/warning:")
st.markdown(f"{words['adapter']}  \n{words['ranks']}")

left, right = st.columns(2)
report = widgets.guarded(recovery.recovery_report_html, result)
if report:
    left.download_button("Download the report (HTML)", report, file_name="recovery-report.html", mime="text/html",
                         key="recovery_report", icon=":material/download:")
adapter_zip = widgets.guarded(recovery.recovery_adapter_zip, result)
if adapter_zip:
    right.download_button("Download the adapter (PEFT, zip)", adapter_zip, file_name="recovery-adapter.zip",
                          mime="application/zip", key="recovery_adapter", icon=":material/download:")
st.caption("The adapter (PEFT format) loads onto the pruned model re-created from the exported mask (Export "
           "page). To write the merged model (every pruned weight still zero) beside the adapter and this report, "
           "run `prunescope recover` with `--out`.")

if result.get("samples"):
    st.subheader("Same prompt, dense vs recovered (greedy decoding)")
    widgets.side_by_side(result["samples"][0], "**Recovered model** (pruned + merged adapter)")

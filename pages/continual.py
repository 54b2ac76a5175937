"""Continual: prune as domains arrive one after another, and read which strategy forgets the earlier ones least.

The domain sequence (embedded corpora and uploaded files, in arrival order), the method and sparsity every step
prunes to, the strategies (joint labelled as the non-continual reference); once the job is done: the answer in
one sentence, the strategies sorted by forgetting (BWT, average perplexity, FWT, rule), the R matrix of each
strategy as a heatmap, BWT and average perplexity as bars, the mask overlap between steps, and the report.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable on its own: `streamlit run pages/continual.py`
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from app import charts, state, widgets  # noqa: E402
from app.services import continual, corpora  # noqa: E402
from app.services.continual import ContinualForm  # noqa: E402

FORM = ContinualForm.widget_defaults()


settings = widgets.page_start(
    "Continual",
    "New data arrives in domains, one after another (this month's tickets, next quarter's manuals). Prune at "
    "every arrival and see what each strategy forgets: the R matrix holds the perplexity on every domain after "
    "every step, and backward transfer (BWT) sums up how much the earlier domains got worse.",
)
widgets.seed_form_from_job("continual", FORM, ContinualForm, settings["model"])
descriptions = continual.continual_strategy_descriptions()
usable = continual.continual_corpora(settings)
labels = corpora.corpus_labels(list(dict.fromkeys([*usable, *st.session_state.get("continual_domains", [])])))
usable = list(labels)  # a remembered domain that is no longer listed stays choosable


def strategy_label(name: str) -> str:
    return name if descriptions.get(name, {}).get("continual", True) else f"{name} (non-continual reference)"


with st.container(border=True):
    domains = st.multiselect("Domains, in arrival order", usable, key="continual_domains",
                             format_func=lambda c: labels.get(c, c),
                             help="Pick them in the order they arrive: the first one picked is D1. Upload your own "
                                  "files on the Setup page; each domain calibrates on its calibration split and "
                                  "is measured on its evaluation split.")
    if domains:
        st.caption("Sequence: " + " → ".join(f"**D{i + 1}** {labels.get(d, d)}" for i, d in enumerate(domains)))
    c1, c2 = st.columns(2)
    method = c1.selectbox("Method", continual.CONTINUAL_METHODS, key="continual_method",
                          help="Methods that read calibration data (magnitude would give the same mask at every "
                               "step).")
    sparsity = c2.slider("Sparsity of every step", 0.1, 0.9, step=0.05, key="continual_sparsity", format="%.2f")
    strategies = st.multiselect("Strategies", continual.CONTINUAL_STRATEGIES, key="continual_strategies",
                                format_func=strategy_label,
                                help="; ".join(f"{n}: {d['description']}" for n, d in descriptions.items()))
    # Bad choices: the error says what to fix, and the page stays.
    spec = widgets.guarded(lambda: ContinualForm(domains, method, sparsity, strategies).to_spec(settings))
    widgets.estimate_line("continual", settings, spec)
    run = st.button("Run the sequence", key="continual_run", type="primary", icon=":material/timeline:",
                    disabled=spec is None,
                    help="Runs as a job: it survives a reload, can be cancelled, and a second run resumes "
                         "without redoing finished steps.")

state.remember_form("continual", FORM)

result = widgets.finished_result("continual", spec, run, settings["model"],
                                 "Choose the domains in arrival order and press **Run the sequence**.")

names = [corpora.corpus_label(d) for d in result["domains"]]
st.caption(f"Sequence **{' → '.join(names)}** · {result['spec']['method']} at "
           f"{float(result['spec']['sparsity']):.0%} per step · {len(result['strategies'])} strategies · "
           "dense propagation")
# Why the same method and sparsity measure differently on the Curves page, with both numbers when both exist.
st.caption(continual.propagation_note(result, settings["model"]))
st.success(continual.continual_answer(result), icon=":material/emoji_events:")
st.info(f"Sign convention: {result.get('bwt_note') or continual.continual_bwt_note()}.", icon=":material/info:")

st.subheader("Strategies, least forgetting first")
st.dataframe(continual.continual_rows(result), hide_index=True, key="continual_table",
             column_config={"rule": st.column_config.TextColumn(width="large")})
st.caption("BWT and FWT are in perplexity points; FWT = how much higher a domain's perplexity is just before its "
           "own step than right after it. The average is over every domain after the last step (lower is better).")

figures = continual.continual_figures(result)
st.subheader("R matrix: perplexity on every domain after every step")
tabs = st.tabs([strategy_label(n) for n in figures["R"]])
for tab, (name, figure) in zip(tabs, figures["R"].items()):
    charts.show(charts.to_plotly(figure), key=f"continual_r_{name}", container=tab,
                alt=f"R matrix of {name}: perplexity per domain (columns) after each step (rows)")
st.caption("Rows: the model after each step; columns: the domain measured. The outlined diagonal is each domain "
           "right after its own step; cells below it show what later steps did to it (forgetting), cells above "
           "it a domain before it arrived. Every tab uses one colour scale.")

st.subheader("Forgetting, quality and how far the masks move")
charts.show(charts.to_plotly(figures["transfer"]), key="continual_transfer_chart",
            alt="BWT and average perplexity after the last step per strategy")
charts.show(charts.to_plotly(figures["overlap"]), key="continual_overlap_chart",
            alt="Mask overlap between consecutive steps per strategy")
st.caption("Overlap: the share of pruned weights two consecutive masks have in common (pruned in both / pruned "
           "in either); 1 = the step changed nothing.")

st.subheader("Per-domain adapters with a selector (ConPET)")
adapters = widgets.guarded(continual.latest_continual_adapters_result, settings["model"])
if adapters:
    st.dataframe(continual.continual_adapter_rows(adapters), hide_index=True, key="continual_adapters_table")
    ratio = adapters.get("forgetting_ratio")
    st.caption("One masked adapter per domain on the pruned model, each input routed to its domain's adapter by a "
               "classifier on the model's hidden states (accuracy measured on held-out windows), against one "
               "adapter trained on the whole sequence. "
               + (f"Per-domain forgetting is {ratio:.2f}x the shared adapter's." if ratio is not None else ""))
else:
    st.caption("No per-domain adapters for this model yet. Train them on this sequence with:")
    st.code(continual.continual_command(result, adapters=True), language="bash")

left, right = st.columns([1, 2])
report = widgets.guarded(continual.continual_report_html, result)
if report:
    left.download_button("Download the report (HTML)", report, file_name="continual-report.html",
                         mime="text/html", key="continual_report", icon=":material/download:")
right.caption("To write every step's mask of every strategy with this report, run:")
right.code(continual.continual_command(result), language="bash")

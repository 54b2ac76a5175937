"""Structured: remove whole attention heads and MLP channels, so the model is really smaller and faster.

Perplexity against the share of decoder parameters removed and against the speed-up measured on this machine
(structured points beside the unstructured points of a sweep of the same model, on the same axes), the widths
left in every layer, the measured sizes and speeds in words, and text from the dense and the pruned model.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable on its own: `streamlit run pages/structured.py`
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from app import charts, state, widgets  # noqa: E402
from app.services import choices, structured  # noqa: E402
from app.services import corpora as corpora_service  # noqa: E402
from app.services.structured import StructuredForm  # noqa: E402

FORM = StructuredForm.widget_defaults()


settings = widgets.page_start(
    "Structured",
    "Remove whole attention heads and MLP channels: the matrices shrink, so the saved model is smaller and every "
    "runtime does less work. Speed-ups here are measured on this machine, dense and pruned in the same run.",
)
widgets.seed_form_from_job("structured", FORM, StructuredForm, settings["model"])

with st.container(border=True):
    c1, c2 = st.columns(2)
    units = c1.multiselect("Units to remove", structured.STRUCTURED_UNITS, key="structured_units",
                           help="heads: attention heads (with grouped-query attention, the same number of query "
                                "heads from every key/value group); channels: MLP intermediate channels; layers: "
                                "whole decoder layers (mixed with heads/channels: the layer share below).")
    ratios = c2.multiselect("Decoder parameters to remove", structured.RATIO_CHOICES, key="structured_ratios",
                            format_func=lambda r: f"{r:.0%}",
                            help="A fraction of the decoder layers' parameters (embeddings and LM head are kept); "
                                 "the result reports the share actually removed (units are indivisible).")
    c3, c4, c5 = st.columns(3)
    score = c3.selectbox("Unit score", structured.STRUCTURED_SCORES, key="structured_score",
                         help="; ".join(f"{k}: {v}" for k, v in structured.STRUCTURED_SCORE_DESCRIPTIONS.items()))
    compensate = c4.toggle("Compensate from calibration data", key="structured_compensate",
                           help="Refit the weights that read the removed units' outputs by least squares on the "
                                "calibration windows (shrinkage chosen by cross-validation, so few windows do not "
                                "overfit).")
    speed = c5.toggle("Measure speed", key="structured_speed",
                      help="Time prefill (512 tokens) and decode (batch 1 and 8) of the dense and the pruned "
                           "model in fp32 and bf16, interleaved, fastest of 3 (other processes only add time); reused until the machine changes.")
    c6, c8, c7 = st.columns([1, 1, 2])
    layer_share = c8.slider("Share removed as whole layers", 0.1, 0.9, step=0.1, key="structured_layer_share",
                            disabled=not ("layers" in units and len(units) > 1),
                            help="With layers and heads/channels both chosen: the part of each ratio removed as "
                                 "whole decoder layers (lowest block influence). Whole layers speed up batch-1 "
                                 "decoding most; widths cost less quality. Compare both with Measure speed.")
    allocation = c6.selectbox("Allocation", choices.ALLOCATIONS, key="structured_allocation",
                              help="How each ratio is spread over the layers (heads and channels): "
                                   + choices.allocation_help())
    prompt = c7.text_input("Prompt for the text comparison", key="structured_prompt")
    # Bad choices: the error says what to fix, and the page stays.
    spec = widgets.guarded(lambda: StructuredForm(units, ratios, score, compensate, speed, prompt, allocation,
                                   layer_share).to_spec(settings))
    widgets.estimate_line("structured", settings, spec)
    run = st.button("Prune structurally", key="structured_run", type="primary", icon=":material/content_cut:",
                    disabled=spec is None)

state.remember_form("structured", FORM)

result = widgets.finished_result("structured", spec, run, settings["model"],
                                 "Choose units and ratios above and press **Prune structurally**.")

points = result["points"]
corpora = list(result["dense_ppl"])
corpus = st.selectbox("Corpus", corpora, key="structured_corpus", format_func=corpora_service.corpus_label) \
    if len(corpora) > 1 else corpora[0]

st.subheader("Quality, size and measured speed")
st.dataframe(structured.structured_table_rows(result, corpus), hide_index=True, key="structured_table")

left, right = st.columns(2)
removed = structured.structured_tradeoff_figure(result, corpus, "removed")
charts.show(charts.to_plotly(removed["figure"]), key="structured_removed_chart", container=left,
            alt="Perplexity against decoder parameters removed, structured and unstructured")
faster = structured.structured_tradeoff_figure(result, corpus, "speedup")
charts.show(charts.to_plotly(faster["figure"]), key="structured_speed_chart", container=right,
            alt="Perplexity against the measured speed-up")
if removed["unstructured_points"]:
    st.caption("Open circles: unstructured points of a sweep of the same model. Their weights are zeroed, not "
               "removed (the zeros are stored and multiplied), so they sit at 1.0x on the speed axis: "
               + result["unstructured_speed"])
else:
    st.caption("Run a sweep of this model on the **Curves** page (same evaluation windows) to see unstructured "
               "methods on the same axes. " + result["unstructured_speed"])
if not any(p.get("speed") for p in points):
    st.caption("Speed was not measured in this run: switch on **Measure speed** to place the points on the "
               "speed axis.")

st.subheader("One setting in detail")
labels = [f"{p['measured_ratio']:.1%} removed" for p in points]
index = st.radio("Setting", range(len(points)), format_func=lambda i: labels[i], horizontal=True,
                 key="structured_point")
point = points[index]
gains = structured.structured_claims(point)
st.markdown(gains["size"] or "")
st.info(gains["speed"], icon=":material/speed:")
speed_rows = structured.structured_speed_rows(point)
if speed_rows:
    st.dataframe(speed_rows, hide_index=True, key="structured_speed_table",
                 column_config={"dense tokens/s": st.column_config.NumberColumn(format="%.1f"),
                                "pruned tokens/s": st.column_config.NumberColumn(format="%.1f"),
                                "speed-up": st.column_config.NumberColumn(format="%.2fx")})
if point.get("load_note"):
    st.caption(point["load_note"])
charts.show(charts.to_plotly(structured.structured_widths_figure(result, index)), key="structured_widths_chart",
            alt="Heads and channels kept per layer")
if point.get("layer_removed"):
    shares = point["layer_removed"]
    st.caption(f"Allocation **{point.get('allocation', 'uniform')}**: each layer lost between {min(shares):.1%} "
               f"and {max(shares):.1%} of its parameters (measured).")

left, right = st.columns([1, 2])
report = widgets.guarded(structured.structured_report_html, result, index)
if report:
    left.download_button("Download the report (HTML)", report, file_name="structured-report.html",
                         mime="text/html", key="structured_report", icon=":material/download:")
right.caption("To write the smaller model as a Hugging Face folder (reloaded and checked) with its report, run:")
right.code(structured.structured_save_command(result, index), language="bash")

if point.get("samples"):
    st.subheader("Same prompt, dense vs structurally pruned (greedy decoding)")
    widgets.side_by_side(point["samples"][0], f"**Structurally pruned** ({point['measured_ratio']:.0%} of "
                         "decoder parameters removed)")

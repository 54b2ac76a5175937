"""Frontier: what compression buys across techniques: size on disk against perplexity, and the smallest file
within your budget.

Every technique and combination measured for this model under the dashboard's protocol (quantized, pruned,
structured, structured + quantized, SparseGPT + GPTQ) is a point of (bytes of the files a runtime loads, measured
on disk; perplexity), judged on the worst of the chosen corpora. The page answers "the smallest file within +X %"
or "the best perplexity within N MB" in one sentence (the same sentence the Summary leads with), draws the chart
and the Pareto front, lists the points, and runs what is missing as jobs: the whole frontier (every missing point,
with progress, resumable) or one quantized setting.
"""

from __future__ import annotations

import functools
import sys
from html import escape
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable on its own: `streamlit run pages/frontier.py`
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from app import charts, widgets  # noqa: E402
from app.formats import format_bytes  # noqa: E402
from app.services import frontier as frontier_service  # noqa: E402
from app.services import point_export  # noqa: E402
from app.services import corpora as corpora_service  # noqa: E402



def point_files(spec: dict, key: str) -> None:
    """A button that writes one point's files (a point_export job: its progress, then its download buttons)."""
    job_spec = point_export.export_job_spec(spec)
    job_id = widgets.guarded(point_export.export_job, job_spec)
    status = widgets.job_panel(point_export.KIND, job_id, spec=job_spec) if job_id else None
    if status is None or status.get("state") in ("failed", "cancelled", "interrupted"):
        words = widgets.guarded(point_export.formats_words, spec) or "its files"
        if st.button(f"Write its files: {words}", key=f"{key}_write", icon=":material/download:"):
            if widgets.start_job(point_export.KIND, job_spec):
                widgets.rerun_page()  # the panel above follows the job, then its files are offered below it
        return
    if status.get("state") != "done" or not status.get("result"):
        return
    items = widgets.guarded(point_export.download_items, status["result"]) or []
    columns = st.columns(max(1, min(3, len(items))))
    for i, item in enumerate(items):
        size = f", {format_bytes(item['bytes'])}" if item.get("bytes") else ""
        # Deferred: a folder is zipped only when its button is clicked, not on every rerun.
        columns[i % len(columns)].download_button(
            f"{item['label']}{size}", functools.partial(point_export.item_bytes, item), file_name=item["name"],
            mime=item["mime"], key=f"{key}_{item['name']}", icon=":material/download:")
    record = status["result"].get("record") or {}
    gguf_check = (record.get("checks") or {}).get("gguf")
    st.caption(f"Written to `{status['result']['folder']}`." + (f" {gguf_check['readback_words']}" if gguf_check
                                                                else ""))


settings = widgets.page_start(
    "Frontier",
    "What compression buys: the bytes of the files a runtime loads against the perplexity they cost, for every "
    "technique and combination measured, and the smallest file within your quality budget.",
)

available = list(settings["eval_corpora"])
labels = corpora_service.corpus_labels(available)
with st.container(border=True):
    c1, c2, c3 = st.columns([2, 2, 3])
    kind = c1.radio("Budget", ["quality", "size"], key="frontier_budget_kind", horizontal=True,
                    format_func=lambda k: {"quality": "at most this much worse", "size": "at most this size"}[k])
    if kind == "quality":
        increase = c2.slider("Perplexity increase", 1, 100, 10, key="frontier_increase", format="+%d %%")
        budget = {"max_increase": increase / 100.0}
    else:
        megabytes = c2.number_input("Size on disk (MB)", min_value=1.0, value=100.0, step=10.0, key="frontier_mb")
        budget = {"max_bytes": int(megabytes * 1e6)}
    if "frontier_corpora" not in st.session_state:
        st.session_state["frontier_corpora"] = list(available)
    chosen = c3.multiselect("Judged on the worst of", available, key="frontier_corpora",
                            format_func=lambda c: labels.get(c, c),
                            help="A point is as good as its perplexity on the corpus where it grows most.")
corpora = [c for c in available if c in chosen] or available

frontier = widgets.guarded(frontier_service.stored_frontier, settings, corpora, **budget)
if frontier is None:
    st.info("Nothing measured yet for the frontier under these settings: press **Measure the frontier** below "
            "(or quantize one setting) to measure the dense model's files and the techniques.",
            icon=":material/info:")
else:
    said = frontier["answer"]
    with st.container(border=True, key="frontier_answer"):
        st.markdown(f'<p class="ps-lead">{escape(said["sentence"])}</p>', unsafe_allow_html=True)
        if said.get("note"):
            st.caption(f":material/info: {said['note']}")
    shown = st.radio("Perplexity on", frontier["corpora"], key="frontier_corpus", horizontal=True,
                     format_func=lambda c: labels.get(c, c)) if len(frontier["corpora"]) > 1 else frontier["corpora"][0]
    charts.show(frontier_service.frontier_chart(frontier, shown), key="frontier_chart",
                alt="Size on disk against perplexity, with the Pareto front")
    st.caption(f"{len(frontier['points'])} points, {len(frontier['front'])} on the Pareto front (judged on "
               f"{', '.join(labels.get(c, c) for c in frontier['corpora'])}). Sizes are the weight files written "
               "in each format and measured on disk; a pruned model saved the ordinary way stores its zeros, so "
               "it weighs what the dense model weighs."
               + (f" Left out: {frontier['left_out']} point(s) not measured on every chosen corpus."
                  if frontier["left_out"] else ""))
    headers = ["technique", "format (runtimes)", "size on disk",
               *[f"perplexity ({labels.get(c, c)})" for c in frontier["corpora"]], "worst change", "on the front",
               frontier_service.SPEED_HEADER]
    st.dataframe([dict(zip(headers, row)) for row in frontier_service.frontier_rows(frontier)], hide_index=True,
                 width="stretch", key="frontier_table")
    st.caption(frontier_service.speed_note(frontier["points"]))  # which runtime and machine measured the speeds
    with st.container(border=True, key="frontier_point_files"):
        st.markdown("**A point's files**: the files exactly this point measured, to download and load in its "
                    "runtime (a quantized point as its compressed-tensors folder and, where its scheme is a GGUF "
                    "block type, its GGUF file for llama.cpp; the dense model as 16-bit safetensors and GGUF F16).")
        by_key = {row["key"]: row for row in frontier["points"]}
        chosen_key = st.selectbox("Point", list(by_key), key="frontier_point",
                                  format_func=lambda k: f"{by_key[k]['technique']} ({format_bytes(by_key[k]['bytes'])})")
        try:
            point_spec = point_export.point_spec(settings, by_key[chosen_key])
        except point_export.ConfigError as problem:
            st.caption(f":material/info: {problem}")
        else:
            point_files(point_spec, "frontier_point_files")
    q4_1 = next((r["note"] for r in frontier["points"] if r.get("note") and "Q4_1" in r["note"]
                 and r["key"] != said.get("key")), None)
    if q4_1:  # beside every 4-bit figure of the embedded model, not only the answer's
        st.caption(f":material/info: {q4_1}")
    st.download_button("Report (HTML)", widgets.guarded(frontier_service.frontier_report_html, frontier,
                                                        settings["model"]) or "",
                       file_name="frontier-report.html", mime="text/html", key="frontier_report",
                       icon=":material/download:")

st.subheader("Measure the frontier")
standard = frontier_service.standard_techniques()
missing = widgets.guarded(frontier_service.missing_techniques, frontier, standard) or []
st.caption("Each technique is measured by its own capability and stored, so a point measured before (here, on "
           "Curves or Structured) is read back, not recomputed. "
           + (f"Missing: {', '.join(missing)}." if missing else "Every standard technique is measured."))
techniques = st.multiselect("Techniques", standard, default=missing or standard, key="frontier_techniques",
                            help="gptq:4:64 = GPTQ 4-bit in groups of 64 (channel = one scale per output row; "
                                 "asym = with a zero point); wanda:0.5 = Wanda 50 %; structured:0.2 = 20 % of "
                                 "decoder parameters removed; a + b = b on top of a.")
smaller = st.text_input("A smaller model of the same family, as a baseline (optional)", key="frontier_smaller",
                        help="A model folder or .gguf file with the same tokenizer, e.g. a 135M beside a 360M.")
spec = widgets.guarded(frontier_service.frontier_spec, settings, techniques, corpora, smaller_model=smaller.strip(),
                       **budget) if techniques else None
if st.button("Measure the frontier", key="frontier_run", type="primary", icon=":material/straighten:",
             disabled=spec is None):
    if widgets.start_job("frontier", spec):
        widgets.rerun_page()  # the answer above is drawn from the store: read it again with this job's points
# The panel reruns the page when the job ends: its points are in the store then, and drawn above.
widgets.job_panel("frontier", widgets.attach_job("frontier", spec, settings["model"]), spec=spec)

st.subheader("Quantize one setting")
with st.container(border=True):
    q1, q2, q3, q4, q5 = st.columns(5)
    method = q1.selectbox("Method", ["gptq", "rtn"], key="frontier_q_method",
                          format_func=lambda m: {"gptq": "GPTQ", "rtn": "round to nearest"}[m])
    bits = q2.selectbox("Bits", [8, 4, 3], index=1, key="frontier_q_bits")
    group = q3.selectbox("Group size", frontier_service.GROUP_CHOICES, index=2, key="frontier_q_group",
                         format_func=lambda g: "per channel" if g == "channel" else f"groups of {g}")
    symmetric = q4.toggle("Symmetric", value=True, key="frontier_q_symmetric",
                          help="Off: an integer zero point per group (4-bit groups of 32 asymmetric is the "
                               "layout of GGUF's Q4_1).")
    start = q5.selectbox("Start from", list(frontier_service.STARTS), key="frontier_q_start",
                         format_func=lambda s: frontier_service.STARTS[s])
    q_spec = widgets.guarded(frontier_service.quantize_spec, settings, method, bits, group, symmetric, start)
    if st.button("Quantize", key="frontier_q_run", icon=":material/compress:", disabled=q_spec is None):
        if widgets.start_job("quantize", q_spec):
            widgets.rerun_page()  # its point joins the frontier above
    q_status = widgets.job_panel("quantize", widgets.attach_job("quantize", q_spec, settings["model"]), spec=q_spec)
    if q_status is not None and q_status.get("state") == "done" and q_status.get("result"):
        record = q_status["result"]
        size = record["bytes"]["compressed-tensors"]
        st.caption(f"{record['setting']['label']}: {format_bytes(size['weight_bytes'])} as {size['label']}; "
                   + ", ".join(f"perplexity on {labels.get(c, c)} {v:,.2f}" for c, v in record["ppl"].items())
                   + (f". {record['note']}" if record.get("note") else "."))
        point_files(q_spec, "frontier_q_files")

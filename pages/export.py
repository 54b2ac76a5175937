"""Export: the chosen setting as a re-applicable mask, a pruned model, an llm-compressor recipe and a report.

Thin page: widgets in, an export job (a worker process, like sweeps and maps: progress, time left, Cancel,
and it survives a reload), download buttons out. Reads the Setup page's choices (shared
settings, quick defaults otherwise), offers the stored What-if masks and takes the Summary's recommendation
pre-filled; runs on its own (`streamlit run pages/export.py`).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import streamlit as st

from app import widgets
from app.charts import curves_chart, heatmap_chart, show
from app.services import choices, corpora, navigation
from app.services import export as svc
from app.services.export import ExportForm

settings = widgets.page_start(
    "Export",
    "Take the chosen setting away: the mask (re-applicable, verified against the model's fingerprint), the "
    "pruned model, a recipe for llm-compressor and an evaluation report to forward.",
)

prefill = navigation.take_export_prefill(st.session_state)  # the Summary's recommendation, handed over once
sources = widgets.guarded(svc.whatif_sources, settings["model"]) or []
by_label = {item["label"]: item for item in sources}
source_label = st.selectbox(
    "What to export", [svc.NEW_SETTING, *by_label], key="export_source",
    help="A stored What-if mask is exported exactly as the What-if made it (per-layer sparsities included), "
         "with the What-if's calibration and evaluation settings; no re-pruning.")
source = by_label.get(source_label)
if prefill and source is None:
    st.info(f"Pre-filled with the Summary's recommendation: {prefill['method']}, {prefill['structure']}, "
            f"{float(prefill['sparsity']):.0%} sparsity, {prefill['propagation']} propagation.",
            icon=":material/recommend:")
if source is not None:
    cfg = source["result"]["config"]
    layers = cfg.get("layer_sparsity") or {}
    st.caption(f"{cfg['method']}, {cfg['structure']}, target {float(cfg['sparsity']):.0%}"
               + (f" with {len(layers)} per-layer overrides" if layers else "")
               + f", {cfg.get('propagation', 'pruned')} propagation; measured sparsity "
               f"{float(source['result']['sparsity']):.1%}.")

with st.form("export-form"):
    left, right = st.columns(2)
    if source is None:
        method = left.selectbox("Method", choices.METHODS, key="export_method")
        structure = left.selectbox("Structure", choices.STRUCTURES, key="export_structure",
                                   help="2:4 can be accelerated by NVIDIA sparse tensor cores; unstructured cannot.")
        sparsity = left.slider("Sparsity (unstructured)", 0.1, 0.9, step=0.01, key="export_sparsity")
        propagation = left.selectbox(
            "Propagation", svc.PROPAGATIONS, key="export_propagation",
            help="pruned: each layer's calibration statistics come from the already-pruned earlier layers (the "
                 "papers' protocol). dense: statistics of the dense model for every layer (the fast Curves mode). "
                 "The same method and sparsity give slightly different perplexities under the two.")
    prompts = right.text_area("Prompts for sample generations (one per line)", "\n".join(svc.DEFAULT_PROMPTS),
                              key="export_prompts")
    heatmap = right.checkbox("Sensitivity heatmap (second-order estimate)", True, key="export_heatmap",
                          help="Each module's estimated loss increase, with its measured agreement with the exact "
                               "metric on the first and last layers.")
    recipe = right.checkbox("llm-compressor recipe", True, key="export_recipe")
    save_model = right.checkbox("Pruned model (zip of a save_pretrained folder)", False, key="export_model")
    pdf = right.checkbox("PDF report (headless Chromium)", False, key="export_pdf")
    lm_eval = right.checkbox("lm-eval on the local tasks", False, key="export_lm_eval")
    limit = right.number_input("lm-eval documents per task", 1, 500, 20, key="export_lm_eval_limit")
    submitted = st.form_submit_button("Export", type="primary")

options = {"prompts": tuple(p.strip() for p in prompts.splitlines() if p.strip()), "heatmap": heatmap,
           "recipe": recipe, "save_model": save_model, "pdf": pdf,
           "lm_eval_tasks": tuple(svc.LOCAL_TASKS) if lm_eval else (), "lm_eval_limit": int(limit)}


def export_job_spec() -> dict:
    """The export job of the form's values (as last applied: a form sends its values when Export is pressed)."""
    if source is None:
        return ExportForm(method, structure, sparsity, propagation).to_spec(settings, options)
    return svc.whatif_export_spec(source, options)


if submitted:
    try:
        widgets.start_job("export", export_job_spec())
    except svc.PruneScopeError as exc:
        st.error(str(exc))
else:
    try:
        widgets.estimate_line("export", settings, export_job_spec())
    except svc.PruneScopeError:
        pass  # the form's values are refused with their message when Export is pressed

status = widgets.job_panel("export", widgets.attach_job("export", None))
result = svc.export_result(status["result"]) if status and status.get("state") == "done" \
    and status.get("result") else None
if result:
    st.subheader("Summary")
    # Corpora as the other pages name them: an upload by its original file name, not its stored path
    # ("<content hash>-<name>" under $PRUNESCOPE_HOME).
    measured = {c for side in ((result["report"].get("ppl") or {}).values()) for c in (side or {})}
    for sentence in result["summary"]:
        for corpus in sorted(measured, key=len, reverse=True):
            sentence = sentence.replace(corpus, corpora.corpus_label(corpus))
        st.markdown(f"- {sentence}")
    st.subheader("Downloads")
    columns = st.columns(3)
    for i, item in enumerate(result["files"]):
        size = f" ({item['bytes'] / 1e6:.2f} MB)" if item.get("bytes") else ""
        # Deferred: the bytes are read (or the pruned model zipped) only when the button is clicked, not on
        # every rerun of the page.
        columns[i % 3].download_button(f"{item['name']}{size}", functools.partial(svc.file_bytes, item),
                                       file_name=item["name"], mime=item["mime"], key=f"download-{item['name']}")
    st.caption(f"Files are also in `{result['folder']}`.")
    st.caption(svc.evaluation_note(result["report"]))
    report = result["report"]
    if report.get("results"):
        corpus = next(iter(report["results"]["dense"]["ppl"]))
        show(curves_chart(report["results"], corpus), key="export-curves")
    if report.get("sensitivity"):
        show(heatmap_chart(report["sensitivity"]), key="export-heatmap")
    elif report.get("sensitivity_note"):
        st.caption(report["sensitivity_note"])

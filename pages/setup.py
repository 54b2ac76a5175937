"""Setup: choose the model, the calibration and evaluation text, and the protocol; see the cost before a run.

Every choice goes into the shared settings (`app.state`), which the other pages read. Defaults are for a
quick look on a laptop (16 windows of 256 tokens); "Paper protocol" sets the Wanda/SparseGPT settings.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable on its own: `streamlit run pages/setup.py`
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from app import state, widgets  # noqa: E402
from app.formats import format_bytes  # noqa: E402
from app.launch import default_model  # noqa: E402
from app.services import choices, corpora, models  # noqa: E402
from app.services import settings as saved  # noqa: E402
from app.services.sensitivity import SensitivityForm  # noqa: E402
from app.services.sweep import SweepForm  # noqa: E402

MODEL_CHOICES = {
    "embedded": "Embedded SmolLM2-135M",
    "launcher": "Chosen at launch",
    "folder": "Local folder",
    "gguf": "GGUF file",
    "hub": "Hugging Face hub id",
}
UPLOAD = "upload a file…"
CORPUS_LABELS = {"wiki": "wiki · Wikipedia articles", "news": "news · Lee news corpus",
                 "pydocs": "pydocs · Python documentation", "wikitext2": "wikitext2 (hub, online only)",
                 "c4": "c4 (hub, online only)", "ptb": "ptb (hub, online only)", UPLOAD: "Upload a file…"}

state.init()
settings = state.settings()


def _seed(key: str, value) -> None:
    """Give a widget its value from the shared settings the first time it is drawn in this visit."""
    if key not in st.session_state:
        st.session_state[key] = value


def _apply_preset(preset: dict) -> None:
    for field, value in preset.items():
        st.session_state[f"setup_{field}"] = value


widgets.intro("Setup", "Choose the model and the text used to <b>calibrate</b> the pruning (which weights "
              "matter) and to <b>evaluate</b> it (perplexity on held-out text). Every other page uses these "
              "choices.")

# ------------------------------------------------------------------------------------------------- model
st.subheader("Model")
launcher = default_model()
sources = ["embedded"] + (["launcher"] if launcher != "embedded" else []) + ["folder", "gguf", "hub"]
if "setup_model_kind" not in st.session_state:
    current = settings["model"]
    st.session_state["setup_model_kind"] = ("embedded" if current == "embedded" else
                                            "launcher" if current == launcher else "folder")
    st.session_state.setdefault("setup_model_path", "" if current in ("embedded", launcher) else current)
kind = st.radio("Model source", sources, key="setup_model_kind", horizontal=True,
                format_func=lambda c: MODEL_CHOICES[c] + (f" ({launcher})" if c == "launcher" else ""))
source = None
facts = None  # the model's facts once it loads: the token checks below need its tokenizer
if kind == "embedded":
    source = "embedded"
elif kind == "launcher":
    source = launcher
else:
    hints = {"folder": "A Hugging Face model folder (with config.json), e.g. /models/llama-1b",
             "gguf": "Path of a .gguf file, e.g. /models/qwen2-0.5b.Q8_0.gguf",
             "hub": "A hub id such as HuggingFaceTB/SmolLM2-360M (needs internet)"}
    typed = st.text_input("Model path or id", key="setup_model_path", placeholder=hints[kind]).strip()
    if kind == "hub":
        st.caption("Hub models need internet access; on an offline machine you will get a message saying so.")
    source = typed or None
if source is None:
    st.info("Enter a model path or id above, or choose the embedded model.", icon=":material/info:")
else:
    facts = widgets.guarded(models.model_facts, source)
    if facts is not None:
        state.update(model=source)
        with st.container(border=True):
            cols = st.columns(5)
            cols[0].metric("Architecture", models.family_label(facts["family"]),
                           help=f"hidden size {facts['hidden_size']}; prunable linears per layer: "
                                f"{', '.join(facts['module_kinds'])}")
            cols[1].metric("Decoder layers", f"{facts['layers']}",
                           help=f"{len(facts['module_kinds'])} prunable linear layers each")
            cols[2].metric("Parameters", f"{facts['parameters'] / 1e6:,.1f} M",
                           help=f"{facts['prunable_parameters'] / 1e6:,.1f} M of them in prunable linears")
            cols[3].metric("Memory", format_bytes(facts["memory_bytes"]),
                           help=f"weights in {facts['dtype']}, as loaded for pruning")
            sizes = models.model_size_labels(facts)
            cols[4].metric("On disk", format_bytes(facts.get("disk_bytes")),
                           help=f"The model file as stored: {facts.get('disk_form') or 'format unknown'}.")
            st.caption(f"**{facts['name']}** · prunable linears per layer: {', '.join(facts['module_kinds'])} · "
                       f"weights fingerprint `{facts['fingerprint']}`")
            # Three sizes of one model: each says what it is, so 98.4 MB and 269.0 MB are not read as a contradiction.
            compared = sizes["value_16bit"] and \
                f"{sizes['value_16bit']} (the dense size What-if and reports compare with)"
            st.caption("Sizes: " + " · ".join(v for v in (sizes["disk"], sizes["memory"], compared) if v))

# ------------------------------------------------------------------------------------------------- data
st.subheader("Calibration and evaluation text")
calib_col, eval_col = st.columns(2, gap="large")
with calib_col:
    uploads = widgets.guarded(corpora.uploaded_corpora) or []  # every earlier accepted upload stays selectable
    calib_options = list(corpora.EMBEDDED_CORPORA) + uploads + [UPLOAD] + list(corpora.HUB_CORPORA)
    if settings["calib"] not in calib_options and corpora.is_file(settings["calib"]):  # a path given elsewhere
        calib_options.insert(len(corpora.EMBEDDED_CORPORA), settings["calib"])
    labels = corpora.corpus_labels([c for c in calib_options if c not in CORPUS_LABELS])
    if st.session_state.get("setup_pending_calib"):
        st.session_state["setup_calib"] = st.session_state.pop("setup_pending_calib")
    current_calib = settings["calib"] if settings["calib"] in calib_options else "wiki"
    _seed("setup_calib", current_calib)
    calib = st.selectbox("Calibration corpus", calib_options, key="setup_calib",
                         format_func=lambda c: CORPUS_LABELS.get(c) or f"file · {labels.get(c, c)}",
                         help="Pruning statistics (which weights matter) come from random windows of this text.")
    refusal = st.session_state.pop("setup_upload_refused", None)  # shown once: it is about that upload only
    if refusal:
        st.error(refusal, icon=":material/block:")
    calib_problem = False
    if calib == UPLOAD:
        upload_column = st.text_input("Text column / field", key="setup_upload_column",
                                      help="For .jsonl/.json/.csv/.parquet files: leave empty for 'text' (JSON) "
                                           "or the only text column (tables).")
        # Any file name: plain text with any extension or none is read as text, and binary content is refused
        # with its reason by the check below (pruning_core.data), not by the name.
        upload = st.file_uploader("Text file", key="setup_upload",
                                  help="Plain UTF-8 text with any extension or none (paragraphs are documents); "
                                       ".jsonl/.json (a 'text' field), .csv/.parquet (a column). Binary files "
                                       "are refused.")
        if upload is not None:
            # Checked here, where it is dropped (content, and enough calibration text for the windows chosen
            # under Protocol); a refused file is not stored and the previous choice stays selected.
            try:
                path = corpora.save_upload(upload.name, upload.getvalue(), settings if facts else None,
                                            upload_column.strip() or None)
            except Exception as error:  # noqa: BLE001 - every refusal is a short message
                st.session_state["setup_upload_refused"] = (
                    f"{widgets.error_text(error)} The calibration text stays "
                    f"**{CORPUS_LABELS.get(current_calib) or corpora.corpus_label(current_calib)}**.")
                st.session_state["setup_pending_calib"] = current_calib
            else:
                state.update(calib=path, calib_column=upload_column.strip() or None)
                st.session_state["setup_calib_column"] = upload_column.strip()
                st.session_state["setup_pending_calib"] = path
            # The selectbox above is already drawn this run: show the outcome on the next run.
            widgets.rerun_page()
        calib = None
    if calib and Path(calib).suffix.lower() in (".csv", ".parquet", ".json", ".jsonl"):
        _seed("setup_calib_column", settings.get("calib_column") or "")
        column = st.text_input("Text column / field", key="setup_calib_column",
                               help="Leave empty for 'text' (JSON) or the only text column (tables).")
        state.update(calib_column=column.strip() or None)
    if calib:
        state.update(calib=calib)
        preview = widgets.guarded(corpora.corpus_preview, calib, "calibration", settings.get("calib_column"))
        calib_problem = preview is None
        if preview is not None:
            tokens = widgets.guarded(corpora.token_count, settings["model"], calib, "calibration",
                                     settings.get("calib_column")) if facts else None
            token_text = f" · **{tokens:,}** tokens" if tokens else ""
            st.caption(f"Calibration split: **{preview['documents']:,}** documents · "
                       f"**{preview['chars']:,}** characters{token_text}")
            with st.expander("Preview the calibration text"):
                st.text(preview["text"] + " …")
                if preview.get("markup_removed"):
                    st.caption("Wiki markup removed for display; the model reads the same text.")
with eval_col:
    eval_options = list(corpora.EMBEDDED_CORPORA) + uploads + list(corpora.HUB_CORPORA)
    for chosen in settings["eval_corpora"]:  # a path given elsewhere
        if chosen not in eval_options and corpora.is_file(chosen):
            eval_options.insert(len(corpora.EMBEDDED_CORPORA), chosen)
    labels = corpora.corpus_labels([c for c in eval_options if c not in CORPUS_LABELS])
    _seed("setup_eval", [c for c in settings["eval_corpora"] if c in eval_options] or ["wiki"])
    evals = st.multiselect("Evaluation corpora", eval_options, key="setup_eval",
                           format_func=lambda c: CORPUS_LABELS.get(c) or f"file · {labels.get(c, c)}",
                           help="Perplexity is measured on the held-out (evaluation) split of each.")
    eval_problem = False
    if evals:
        state.update(eval_corpora=list(evals))
        for corpus in evals:
            info = widgets.guarded(corpora.corpus_preview, corpus, "evaluation")
            eval_problem = eval_problem or info is None
            if info is not None:
                st.caption(f"**{labels.get(corpus, corpus)}** evaluation split: "
                           f"{info['documents']:,} documents · {info['chars']:,} characters")
    else:
        st.warning("Choose at least one evaluation corpus.", icon=":material/warning:")

# ---------------------------------------------------------------------------------------------- protocol
st.subheader("Protocol")
for field in ("nsamples", "seqlen", "eval_windows", "seed", "dtype"):
    _seed(f"setup_{field}", settings[field])
p1, p2, p3, p4, p5 = st.columns(5)
nsamples = p1.number_input("Calibration windows", 1, 4096, step=1, key="setup_nsamples",
                           help="nsamples in the papers and the CLI: how many random windows of the calibration "
                                "text the pruning statistics are computed from. More: steadier masks, slower "
                                "(papers: 128).")
seqlen = p2.number_input("Tokens per window", 8, 8192, step=32, key="setup_seqlen",
                         help="seqlen in the papers and the CLI: the length, in tokens, of every calibration and "
                              "evaluation window; the model reads each window on its own (papers: 2048).")
eval_windows = p3.number_input("Evaluation windows", 1, 100_000, step=1, key="setup_eval_windows",
                               help="Perplexity uses the first N non-overlapping windows of each evaluation "
                                    "split (papers: all of them).")
seed = p4.number_input("Seed", 0, 2**31 - 1, step=1, key="setup_seed", help="Calibration sampling seed.")
dtype = p5.selectbox("Eval dtype", choices.EVAL_DTYPES, key="setup_dtype",
                     help="Compute dtype of the perplexity evaluation.")
state.update(nsamples=int(nsamples), seqlen=int(seqlen), eval_windows=int(eval_windows), seed=int(seed),
             dtype=dtype)
b1, b2, _ = st.columns([1, 1, 3])
b1.button("Quick look", key="setup_quick", on_click=_apply_preset, args=(saved.QUICK,),
          icon=":material/bolt:", width="stretch", help="16 windows × 256 tokens, 16 evaluation windows")
b2.button("Paper protocol", key="setup_paper", on_click=_apply_preset, args=(saved.PAPER,),
          icon=":material/menu_book:", width="stretch",
          help="128 windows × 2048 tokens, the whole evaluation split (as in Wanda/SparseGPT)")

# --------------------------------------------------------------------------------------------- estimate
st.subheader("Before you run")
if source and evals:
    specs_ok = False
    try:
        sweep = SweepForm(methods=["wanda"], structures=["unstructured"], sparsities=[0.5]).to_spec(settings)
        sens = SensitivityForm(sparsities=[0.5]).to_spec(settings)  # the page's default: "Automatic"
    except Exception as error:  # noqa: BLE001
        widgets.show_error(error)
    else:
        specs_ok = True
        e1, e2 = st.columns(2)
        with e1:
            st.markdown("**One curve point** (Wanda, 50 %)")
            widgets.estimate_line("sweep", settings, sweep)
        with e2:
            # The Sensitivity page's default: the second-order estimate refined to the exact map (whole job).
            st.markdown("**One sensitivity map** (Automatic: estimate refined to exact, 50 %)")
            widgets.estimate_line("sensitivity", settings, sens)
    # "Saved" only when a run can start: the texts read, and the calibration text holds the chosen windows.
    ready = specs_ok and not calib_problem and not eval_problem
    if ready and facts:
        ready = widgets.guarded(corpora.check_calibration_fits, settings) is not None
        ready = widgets.guarded(corpora.check_evaluation_fits, settings) is not None and ready
    if ready:
        st.success("Settings saved: open **Sensitivity** or **Curves** in the menu to run. A reload or a new "
                   "tab opens with them.", icon=":material/check_circle:")
    else:
        st.warning("Fix the problem shown above before running: the pages use these settings.",
                   icon=":material/warning:")

"""Home: what PruneScope does, which model is preselected, and where to go next.

Text only, on purpose: no chart appears here until something has been measured (no made-up numbers).
Runs inside `app/main.py`'s navigation or on its own (`streamlit run pages/home.py`).
"""

from __future__ import annotations

import sys
from html import escape
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # runnable on its own: `streamlit run pages/home.py`
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402
from streamlit.errors import StreamlitAPIException  # noqa: E402

from app.launch import DEFAULT_MODEL, default_model  # noqa: E402
from app.main import available_pages  # noqa: E402
from app.services import jobs  # noqa: E402

#: How the Home page counts each kind of stored result.
KIND_NAMES = {"sweep": ("sweep", "sweeps"), "sensitivity": ("sensitivity map", "sensitivity maps"),
              "whatif": ("what-if", "what-ifs"), "budget": ("budget search", "budget searches"),
              "structured": ("structured run", "structured runs"), "recovery": ("recovery", "recoveries"),
              "continual": ("continual run", "continual runs")}

EMBEDDED_DESCRIPTION = (
    "SmolLM2-135M-Instruct, a Llama-architecture model with 135 million parameters "
    "(30 decoder layers, 7 prunable linear layers each). It ships inside PruneScope and runs on a laptop CPU."
)

#: What each page answers, by page script. The cards follow the menu's order (`app.main.PAGES`, the one register
#: of pages), not an order of their own; a page without a line here still gets a card with its title.
CARD_TEXT = {
    "pages/setup.py": "Pick the model and the text it is calibrated and tested on (Wikipedia, news, Python docs or "
                      "your own file). See the model's size and how long a run will take before it starts.",
    "pages/sensitivity.py": "A heatmap of every layer and module: where does removing weights hurt most? Darker is "
                            "safer, brighter is more sensitive.",
    "pages/allocation.py": "Spread one sparsity over the layers (uniform, OWL, or by measured sensitivity) and see "
                           "the plan before pruning with it.",
    "pages/curves.py": "Perplexity against sparsity for magnitude, Wanda and SparseGPT, with the dense model as the "
                       "reference line and the 2:4 / 4:8 hardware-friendly patterns marked.",
    "pages/what_if.py": "Try one setting, compare the pruned model's text with the original's from the same prompt, "
                        "and see the real size saving.",
    "pages/structured.py": "Remove whole attention heads and MLP channels: a really smaller model, with its speed "
                           "measured on this machine.",
    "pages/recovery.py": "Win back quality with a small adapter trained after pruning; every pruned weight stays "
                         "zero.",
    "pages/continual.py": "Prune as new domains arrive one after another and see which strategy forgets the earlier "
                          "ones least.",
    "pages/summary.py": "The recommended setting for your quality budget, in one screen for a demo.",
    "pages/export.py": "The mask, the pruned model and a report to take away and re-apply.",
}
#: Cards in one row of the Home page.
CARDS_PER_ROW = 5


def page_card(number: int, spec) -> None:
    """One page's card: a link to the page (numbered as in the menu) and what it answers. Run on its own
    (`streamlit run pages/home.py`) there is no menu to link into: the card then names the page."""
    label = f"{number} · {spec.title}"
    try:
        # The absolute path, as app/main.py registers it (a relative one resolves against app/).
        st.page_link(str(_ROOT / spec.path), label=label, icon=spec.icon)
    except StreamlitAPIException:
        st.markdown(f"**:blue[{label}]**")
    body = CARD_TEXT.get(spec.path, "")
    st.markdown(f'<p class="ps-step">{body}</p>', unsafe_allow_html=True)

st.title("PruneScope")
st.markdown(
    '<p class="ps-lead">How far can this language model be pruned, where, and at what cost in quality? '
    "PruneScope removes a chosen share of a model's weights with the methods from the research literature "
    "(magnitude, Wanda, SparseGPT), measures how much worse the model gets at predicting text "
    "(<b>perplexity</b>: lower is better), and shows which parts of the model can lose weights safely.</p>",
    unsafe_allow_html=True,
)

model = default_model()
with st.container(border=True):
    st.markdown(f'<span class="ps-pill">Model</span>&nbsp; <b>{escape(model)}</b>', unsafe_allow_html=True)
    if model == DEFAULT_MODEL:
        st.caption(EMBEDDED_DESCRIPTION)
    else:
        st.caption("Chosen with `prunescope ui --model`. Start without `--model` to use the embedded "
                   "SmolLM2-135M-Instruct.")

st.subheader("How it works")
# One card per page, in the menu's order; bordered columns stretch to the tallest card, so a row reads as a strip.
cards = [spec for spec in available_pages() if not spec.default]
for first in range(0, len(cards), CARDS_PER_ROW):
    for offset, column in enumerate(st.columns(CARDS_PER_ROW, border=True)[:len(cards[first:first + CARDS_PER_ROW])]):
        with column:
            page_card(first + offset + 1, cards[first + offset])

st.write("")
# What the store already holds for this model (any session): never "nothing measured" after hours of results.
counts = jobs.finished_counts(model)  # one read of the store for every kind
stored = {kind: counts.get(kind, 0) for kind in KIND_NAMES}
if any(stored.values()):
    found = ", ".join(f"{n} {KIND_NAMES[kind][n != 1]}" for kind, n in stored.items() if n)
    st.info(f"Stored for this model: {found}. The **Summary** page gathers them into one answer; every number "
            "comes from a real run on your model.", icon=":material/info:")
else:
    st.info("Open the pages from the menu on the left. Nothing has been measured for this model yet, so no chart "
            "is shown here: every number in PruneScope comes from a real run on your model.",
            icon=":material/info:")

with st.expander("Terms used throughout"):
    st.markdown(
        "- **Sparsity**: the share of weights set to zero, over all pruned linear layers (50 % = half).\n"
        "- **Perplexity**: how surprised the model is by held-out text; the dense (unpruned) model is the "
        "reference, and *+10 %* means 10 % higher than dense.\n"
        "- **N:M (2:4, 4:8)**: at most N non-zero weights in every M consecutive ones; the only pattern that "
        "current GPUs turn into real speed. Unstructured sparsity saves nothing on ordinary dense kernels.\n"
        "- **Sensitivity**: how much the loss rises when one module alone is pruned and the rest stays intact."
    )

with st.expander("The same from a terminal"):
    st.code(
        "prunescope sweep --model embedded --calib wiki --eval wiki,news \\\n"
        "    --methods magnitude,wanda,sparsegpt --structures unstructured,2:4 --sparsities 0.5,0.7 \\\n"
        "    --nsamples 64 --seqlen 512 --eval-windows 64 --seed 0 --out runs/first",
        language="bash",
    )

"""An uploaded corpus is named by its own file name on every page, never by its stored path (journey, issue 26
point 3: ".../uploads/3972dc9744f6-GPL-3" in the Curves radio, chart titles and table header, the Recovery legend,
the Summary's "Judged on", Continual labels). Driven by AppTest on the tiny model with a store whose results
were measured on an upload; everything a page draws is read (prose, widget options, table headers and cells,
chart titles, axis titles, legends, hover text) and must hold neither the uploads folder nor the stored name's
hash prefix."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("streamlit")
from tests.app.apptest_helpers import SMALL, insert_job, ok, page  # noqa: E402

pytestmark = pytest.mark.usefixtures("app_env")  # tiny model, a temporary PRUNESCOPE_HOME, inline jobs

STORED_NAME = "3972dc9744f6-GPL-3"  # as the Setup page stores an accepted upload: content hash, then its name
SHOWN_NAME = "GPL-3"


def _visible_strings(value, key: str = "") -> list[str]:
    """Every string of a chart spec a reader can see (titles, names, text, hover templates, tick text), leaving out
    `meta`, which tests and pages read and no reader sees."""
    if key == "meta":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _visible_strings(v, k)]
    if isinstance(value, list):
        return [s for v in value for s in _visible_strings(v, key)]
    return []


def everything_shown(at) -> str:
    """The text of every element AppTest sees on the page, widget options, tables and charts included."""
    parts = []
    for group in ("title", "header", "subheader", "markdown", "caption", "info", "warning", "success", "error",
                  "text", "code"):
        parts += [str(e.value) for e in getattr(at, group)]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    for group in ("radio", "selectbox", "multiselect"):
        for widget in getattr(at, group):
            parts += [str(widget.label), *[str(o) for o in widget.options]]
    for table in at.dataframe:
        frame = table.value.data if hasattr(table.value, "data") else table.value
        parts += [str(c) for c in frame.columns] + [str(v) for v in frame.to_numpy().ravel()]
    for chart in at.get("plotly_chart"):
        parts += _visible_strings(json.loads(chart.proto.spec))
    return "\n".join(parts)


def assert_named_by_file_name(at) -> None:
    shown = everything_shown(at)
    assert "uploads" not in shown and STORED_NAME[:12] not in shown, [
        line for line in shown.splitlines() if "uploads" in line or STORED_NAME[:12] in line]


@pytest.fixture()
def upload_results(app_env):
    """Settings calibrated and evaluated on an upload, and a finished sweep measured on it (wanda, two points)."""
    from pruning_core.data import load_corpus_text

    stored = app_env / "uploads" / STORED_NAME
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_text(load_corpus_text("news", "calibration", None) + "\n\n"
                      + load_corpus_text("news", "evaluation", None))
    corpus = str(stored)
    settings = {**SMALL, "calib": corpus, "eval_corpora": [corpus, "news"]}
    points = [{"method": "wanda", "structure": "unstructured", "target_sparsity": s, "sparsity": s,
               "ppl": {corpus: p, "news": p + 1}, "prune_seconds": 1.0, "eval_seconds": 1.0, "propagation": "pruned"}
              for s, p in ((0.3, 300.0), (0.5, 320.0))]
    insert_job("sweep", {"model": "tiny-llama"}, "done",
               {"model": {"name": "tiny", "fingerprint": "f"}, "dense": {"ppl": {corpus: 290.0, "news": 291.0}},
                "protocol": {**{k: SMALL[k] for k in ("nsamples", "seqlen", "seed", "eval_windows", "dtype")},
                             "calib": corpus, "propagation": "pruned"},
                "points": points})
    return settings, corpus


def test_the_curves_page_names_an_upload_by_its_file_name(upload_results):
    settings, corpus = upload_results
    at = ok(page("curves", settings))
    assert at.get("plotly_chart") and at.dataframe  # the chart and the table are drawn
    assert SHOWN_NAME in everything_shown(at)
    assert_named_by_file_name(at)
    # The header never claims a flat window count for a text that may hold fewer (journey point 8: "(16 windows)"
    # in every header when the evaluation text held 5).
    header = next(str(c.value) for c in at.caption if str(c.value).startswith("Model **"))
    assert f"up to {SMALL['eval_windows']} windows each: a shorter text gives fewer" in header


@pytest.mark.parametrize("name", [
    "setup", "what_if", "export", "summary",
])
def test_other_pages_name_an_upload_by_its_file_name(upload_results, name):
    settings, _ = upload_results
    at = page(name, settings)
    assert not at.exception, [e.value for e in at.exception]
    assert_named_by_file_name(at)


def test_the_recovery_chart_names_an_upload_by_its_file_name(upload_results):
    from pruning_core.recovery.figures import loss_figure, perplexity_figure

    _, corpus = upload_results
    result = {"dense_ppl": {corpus: 290.0}, "pruned_ppl": {corpus: 320.0}, "recovered_ppl": {corpus: 300.0},
              "spec": {"curve_windows": 2}, "history": {"loss": [[1, 5.0], [2, 4.0]],
                                                        "evals": [[1, {corpus: 310.0}], [2, {corpus: 305.0}]]}}
    for figure in (perplexity_figure(result), loss_figure(result)):
        shown = "\n".join(_visible_strings(figure))
        assert "uploads" not in shown and STORED_NAME[:12] not in shown
    assert any(SHOWN_NAME in s for s in _visible_strings(perplexity_figure(result)))

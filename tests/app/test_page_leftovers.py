"""Journey leftovers, each driven by AppTest on a tiny model (jobs inline: PRUNESCOPE_INLINE_JOBS=1), each a
check that fails on the defect it names:

* What-if: a new session (reload, second tab) shows the form that made the job it follows, and a failed
  run's error is not shown once the form's choices are no longer that run's;
* Export: an uploaded corpus is named by its original file name, not its stored path with a hash;
* Setup: a text file without an extension (or with an unfamiliar one) is accepted and calibrates, binary
  content is still refused; the model family reads as a name ("GPT-NeoX", not "Gpt_neox"); the calibration
  preview says when wiki markup was removed for display.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from tests.app.apptest_helpers import (SMALL, UPLOAD, errors, insert_job, no_exception, page,  # noqa: E402
                                       paragraphs, status_text_of, upload)

pytestmark = pytest.mark.usefixtures("app_env")


def session(name: str, settings: dict = SMALL, **state) -> AppTest:
    """A new browser session on a page, with `state` preset in its session (e.g. the job it followed)."""
    return no_exception(page(name, settings, timeout=180, **state))


# ------------------------------------------------------------------------------------------------- What-if


def test_a_second_what_if_tab_shows_the_form_of_the_running_job():
    from app.services import what_if
    spec = what_if.whatif_spec(SMALL, "magnitude", "unstructured", 0.3, None, "Once upon a time")
    insert_job("whatif", spec, "running")
    at = session("what_if")
    assert at.selectbox(key="whatif_method").value == "magnitude"
    assert at.selectbox(key="whatif_structure").value == "unstructured"
    assert at.slider(key="whatif_sparsity").value == pytest.approx(0.3)
    assert at.text_area(key="whatif_prompt").value == "Once upon a time"
    assert "started with other settings" not in status_text_of(at)  # the form is the job's


def test_a_failed_what_if_error_goes_once_the_form_no_longer_matches_it():
    from app.services import choices, what_if
    spec = what_if.whatif_spec(SMALL, "wanda", "unstructured", 0.5, None, choices.DEFAULT_PROMPT)
    failed = insert_job("whatif", spec, "failed", error="the calibration text was too short")
    same = session("what_if", jobs={"whatif": failed})
    assert any("calibration text was too short" in e for e in errors(same)), errors(same)
    other = session("what_if", jobs={"whatif": failed}, whatif_method="magnitude")
    assert not errors(other), errors(other)


# -------------------------------------------------------------------------------------------------- Export


def test_export_names_an_uploaded_corpus_by_its_original_file_name(app_env):
    from pruning_core.data import load_corpus_text

    stored = app_env / "uploads" / "0123456789ab-field notes.txt"
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_text(load_corpus_text("news", "calibration", None) + "\n\n"
                      + load_corpus_text("news", "evaluation", None))
    at = session("export", {**SMALL, "calib": str(stored), "eval_corpora": [str(stored)]})
    at.checkbox(key="export_heatmap").set_value(False)
    at.button[0].click().run()  # the form's Export button
    assert not at.exception, [e.value for e in at.exception]
    summary = [str(m.value) for m in at.markdown if str(m.value).startswith("- ")]
    assert any("Perplexity on field notes.txt went from" in s for s in summary), summary
    assert not any("0123456789ab" in s for s in summary), summary


# --------------------------------------------------------------------------------------------------- Setup


@pytest.mark.parametrize("name", ["field-notes", "field notes.md"])
def test_a_text_file_without_a_known_extension_is_accepted_and_calibrates(app_env, name):
    from pruning_core.models import load_model
    from pruning_core.protocol import Protocol, calibration_ids

    at = session("setup")
    at.selectbox(key="setup_calib").set_value(UPLOAD).run()
    # The browser offers every file: the uploader has no extension filter (the content is checked instead).
    assert list(at.get("file_uploader")[0].proto.type) == [], "the uploader must not filter by extension"
    upload(at, name, paragraphs(60, "field"))
    assert not errors(at), errors(at)
    calib = at.session_state["settings"]["calib"]
    assert Path(calib).parent == app_env / "uploads" and Path(calib).name.endswith(name)
    ids = calibration_ids(load_model("tiny-llama"), Protocol(calib=calib, nsamples=4, seqlen=32))
    assert tuple(ids.shape) == (4, 32)


def test_a_binary_file_without_an_extension_is_still_refused(app_env):
    at = session("setup")
    upload(at, "dump", b"\x7fELF\x02\x01\x01\x00\x00\x00binary\x00\xff\xfe")
    assert any("dump" in e and "binary" in e for e in errors(at)), errors(at)
    assert at.session_state["settings"]["calib"] == "news"


def test_setup_names_the_family_readably_and_says_when_wiki_markup_was_removed():
    from app.services import models
    assert models.family_label("gpt_neox") == "GPT-NeoX" and models.family_label("phi3") == "Phi-3"
    assert models.family_label("some_new_model") == "Some-new-model"
    at = session("setup", {**SMALL, "model": "tiny-gpt_neox", "calib": "wiki"})
    facts = {m.label: m.value for m in at.metric}
    assert facts["Architecture"] == "GPT-NeoX"
    assert "Wiki markup removed for display; the model reads the same text." in status_text_of(at)
    news = session("setup")
    assert "Wiki markup removed" not in status_text_of(news)

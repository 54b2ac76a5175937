"""The dashboard journey's rough edges with uploads and stale state, each driven by AppTest on a tiny model
(jobs inline: PRUNESCOPE_INLINE_JOBS=1), each a check that fails on the defect it names:

* a refused upload (binary, or too small for the calibration windows) is refused where it is dropped, the
  previous calibration text stays chosen, earlier good uploads stay listed under their original names;
* a failed run's message goes once its cause is fixed; a cancelled map run keeps the newest finished map;
* a page left and shown again, a second tab, and a reload show the form and settings that made the job shown.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from tests.app.apptest_helpers import (SMALL, errors, fake_map, insert_job, multipage_app,  # noqa: E402
                                       no_exception, page, paragraphs, status_text_of, upload)

pytestmark = pytest.mark.usefixtures("app_env")


# ------------------------------------------------------------------------------------------------ uploads


def test_a_binary_upload_is_refused_and_the_previous_calibration_text_stays_chosen(app_env):
    at = no_exception(page("setup"))
    upload(at, "notes.txt", b"\x7fELF\x02\x01\x01\x00\x00\x00binary\x00\xff\xfe")
    assert any("notes.txt" in e and "binary" in e for e in errors(at)), errors(at)
    assert at.selectbox(key="setup_calib").value == "news"
    assert at.session_state["settings"]["calib"] == "news"
    assert not any(p.is_file() for p in (app_env / "uploads").rglob("*")), "a refused file must not be stored"
    # The message was about that upload; the next interaction draws the page from the current state only.
    at.number_input(key="setup_nsamples").set_value(5).run()
    assert not errors(no_exception(at)) and "Settings saved" in status_text_of(at)


def test_an_upload_too_small_for_the_calibration_windows_is_refused_where_it_is_dropped(app_env):
    at = no_exception(page("setup"))  # 4 calibration windows of 32 tokens: 128 tokens needed
    upload(at, "short.txt", b"A short note.\n\nAnother one.\n\nAnd a third.")
    message = next((e for e in errors(at) if "short.txt" in e), None)
    assert message is not None, errors(at)
    assert "calibration text" in message and "Calibration windows" in message
    assert "seqlen" not in message and "evaluation" not in message
    assert at.session_state["settings"]["calib"] == "news"
    assert at.selectbox(key="setup_calib").value == "news"


def test_good_uploads_stay_selectable_under_their_original_names(app_env):
    at = no_exception(page("setup"))
    upload(at, "field notes.txt", paragraphs(60, "field"))
    first = at.session_state["settings"]["calib"]
    assert Path(first).parent == app_env / "uploads" and at.selectbox(key="setup_calib").value == first
    assert not errors(at) and "Settings saved" in status_text_of(at)
    upload(at, "lab notes.txt", paragraphs(60, "lab"))
    second = at.session_state["settings"]["calib"]
    assert second != first
    upload(at, "broken.txt", b"\x00\x01\x02")  # refused: the last good choice stays
    calib = at.selectbox(key="setup_calib")
    assert calib.value == second
    labels = [str(o) for o in calib.options]
    assert "file · field notes.txt" in labels and "file · lab notes.txt" in labels, labels
    assert not any(Path(first).name in label or Path(second).name in label for label in labels), labels
    at.selectbox(key="setup_calib").set_value(first).run()  # the earlier upload is still usable
    assert no_exception(at).session_state["settings"]["calib"] == first and not errors(at)
    # Other pages name it as the user does too (the content hash stays in the stored path only).
    curves = page("curves", {**SMALL, "calib": first})
    assert "calibration **field notes.txt**" in status_text_of(curves)


def test_setup_says_when_the_chosen_calibration_text_is_too_short_instead_of_settings_saved(app_env):
    at = no_exception(page("setup"))
    upload(at, "notes.txt", paragraphs(60, "field"))
    assert "Settings saved" in status_text_of(at)
    at.number_input(key="setup_nsamples").set_value(400).run()  # 400 x 32 tokens: more than the file holds
    assert any("calibration text of 'notes.txt'" in e for e in errors(no_exception(at))), errors(at)
    assert "Settings saved" not in status_text_of(at)
    at.number_input(key="setup_nsamples").set_value(4).run()  # fixed: the message goes
    assert not errors(no_exception(at)) and "Settings saved" in status_text_of(at)


def test_calibration_tokens_needed_is_the_rule_of_the_core_windows():
    import torch

    from app.services.corpora import calibration_tokens_needed
    from pruning_core.data import random_token_windows
    from pruning_core.errors import CorpusError

    for nsamples, seqlen in ((4, 32), (1, 64), (16, 8)):
        needed = calibration_tokens_needed(nsamples, seqlen)
        random_token_windows(torch.arange(needed), nsamples, seqlen, seed=0)  # enough
        with pytest.raises(CorpusError):
            random_token_windows(torch.arange(needed - 1), nsamples, seqlen, seed=0)


# ------------------------------------------------------------------------------------------- stale state


def test_a_failed_runs_message_goes_once_its_cause_is_fixed(app_env):
    short = app_env / "short.txt"
    short.write_bytes(b"A short note.\n\nAnother one.\n\nAnd a third.")  # far fewer than 4 x 32 tokens
    at = no_exception(page("curves", {**SMALL, "calib": str(short)}))
    at.multiselect(key="curves_methods").set_value(["magnitude"])
    at.button(key="curves_run").click().run()
    assert any("The run failed" in e for e in errors(no_exception(at))), errors(at)
    at.session_state["settings"] = dict(SMALL)  # the cause fixed on Setup: a long enough calibration text
    no_exception(at.run())
    assert not errors(at), errors(at)


def test_after_cancel_the_newest_finished_map_stays_on_the_page(app_env):
    from app.services import sensitivity
    done_spec = sensitivity.sensitivity_spec(SMALL, "wanda", [0.5], ["reconstruction"], 8)
    done = {"maps": [fake_map("reconstruction")], "correlations": []}
    insert_job("sensitivity", done_spec, "done", done, age_s=60)
    long_spec = sensitivity.sensitivity_spec(SMALL, "wanda", [0.5], ["exact"], 64)
    cancelled = insert_job("sensitivity", long_spec, "cancelled")
    # The session followed the run it cancelled, with that run's form.
    at = no_exception(page("sensitivity", jobs={"sensitivity": cancelled}, sens_metrics=["exact"], sens_probe=64))
    assert any("cancelled" in str(w.value) for w in at.warning)
    assert "No map yet" not in status_text_of(at)
    assert at.get("plotly_chart"), "the finished map must be drawn"
    assert "newest finished map (wanda · 50%)" in status_text_of(at)


def test_leaving_curves_and_coming_back_keeps_the_form_that_made_the_job_shown(app_env):
    at = no_exception(multipage_app())
    no_exception(at.switch_page("../pages/curves.py").run())
    at.multiselect(key="curves_methods").set_value(["wanda"])
    at.multiselect(key="curves_sparsities").set_value([0.3])
    at.radio(key="curves_propagation").set_value("dense")
    at.button(key="curves_run").click().run()
    assert no_exception(at).get("plotly_chart")
    no_exception(at.switch_page("../pages/setup.py").run())
    assert "curves_methods" not in at.session_state  # Streamlit forgot the widget: the page must restore it
    no_exception(at.switch_page("../pages/curves.py").run())
    assert at.multiselect(key="curves_methods").value == ["wanda"]
    assert at.multiselect(key="curves_sparsities").value == [0.3]
    assert at.radio(key="curves_propagation").value == "dense"
    assert "Finished" in status_text_of(at)  # the panel of the job that form made


def test_a_second_tab_shows_the_form_of_the_running_job(app_env):
    from app.services import sensitivity, sweep
    sweep_job = sweep.sweep_spec(SMALL, ["magnitude"], ["unstructured", "2:4"], [0.3, 0.7], "dense")
    insert_job("sweep", sweep_job, "running")
    at = no_exception(page("curves"))  # a new session: it re-attaches to the running job
    assert at.multiselect(key="curves_methods").value == ["magnitude"]
    assert at.multiselect(key="curves_structures").value == ["unstructured", "2:4"]
    assert at.multiselect(key="curves_sparsities").value == [0.3, 0.7]
    assert at.radio(key="curves_propagation").value == "dense"
    assert "other settings" not in status_text_of(at)

    sens = sensitivity.sensitivity_spec(SMALL, "magnitude", [0.3, 0.6], ["reconstruction", "taylor"], 4)
    insert_job("sensitivity", sens, "running")
    at = no_exception(page("sensitivity"))
    assert at.selectbox(key="sens_method").value == "magnitude"
    assert at.multiselect(key="sens_sparsities").value == [0.3, 0.6]
    assert at.multiselect(key="sens_metrics").value == ["reconstruction", "taylor"]
    assert at.number_input(key="sens_probe").value == 4


def test_a_reload_keeps_the_corpora_chosen_on_setup(app_env):
    at = no_exception(page("setup"))
    at.multiselect(key="setup_eval").set_value(["news", "pydocs"]).run()
    at.number_input(key="setup_seqlen").set_value(40).run()
    no_exception(at)
    reloaded = no_exception(page("setup", settings=None))  # a new session with nothing preset
    assert reloaded.multiselect(key="setup_eval").value == ["news", "pydocs"]
    assert reloaded.selectbox(key="setup_calib").value == "news"
    assert reloaded.number_input(key="setup_seqlen").value == 40
    other = no_exception(page("curves", settings=None))  # any page of a new session
    assert other.session_state["settings"]["eval_corpora"] == ["news", "pydocs"]
    assert "evaluation **news, pydocs**" in status_text_of(other)


def test_a_saved_choice_that_no_longer_exists_falls_back_to_the_defaults(app_env):
    from app.services import settings
    gone = app_env / "uploads" / "0123456789ab-gone.txt"
    settings.save_settings("tiny-llama", {**SMALL, "calib": str(gone), "eval_corpora": [str(gone), "news"],
                                          "nsamples": -3})
    saved = settings.saved_settings("tiny-llama")
    assert "calib" not in saved and saved["eval_corpora"] == ["news"] and "nsamples" not in saved
    assert settings.saved_settings("another-model") == {}
    at = no_exception(page("setup", settings=None))
    assert at.session_state["settings"]["calib"] == "wiki"
    assert at.session_state["settings"]["eval_corpora"] == ["news"]

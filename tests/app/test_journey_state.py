"""The dashboard journey's rough edges with uploads and stale state, each driven by AppTest on a tiny model
(jobs inline: PRUNESCOPE_INLINE_JOBS=1), each a check that fails on the defect it names:

* a refused upload (binary, or too small for the calibration windows) is refused where it is dropped, the
  previous calibration text stays chosen, earlier good uploads stay listed under their original names;
* a failed run's message goes once its cause is fixed; a cancelled map run keeps the newest finished map;
* a page left and shown again, a second tab, and a reload show the form and settings that made the job shown.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
MAIN = str(REPO_ROOT / "app" / "main.py")
PAGE = {name: str(REPO_ROOT / "pages" / f"{name}.py") for name in ("setup", "curves", "sensitivity")}
SMALL = {"model": "tiny-llama", "calib": "news", "calib_column": None, "eval_corpora": ["news"],
         "nsamples": 4, "seqlen": 32, "eval_windows": 4, "seed": 0, "dtype": "float32"}
UPLOAD = "upload a file…"


@pytest.fixture(autouse=True)
def app_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNESCOPE_DEFAULT_MODEL", "tiny-llama")
    monkeypatch.setenv("PRUNESCOPE_HOME", str(tmp_path))
    monkeypatch.setenv("PRUNESCOPE_INLINE_JOBS", "1")
    return tmp_path


def session(name: str, settings: dict | None = SMALL) -> AppTest:
    """A new browser session on a page (a reload or a second tab is a new session); None: no preset settings."""
    at = AppTest.from_file(PAGE[name], default_timeout=120)
    if settings is not None:
        at.session_state["settings"] = dict(settings)
    return at.run()


def no_exception(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def errors(at: AppTest) -> list[str]:
    return [str(e.value) for e in at.error]


def text_of(at: AppTest) -> str:
    return "\n".join(str(e.value) for group in (at.markdown, at.caption, at.info, at.warning, at.success)
                     for e in group)


def paragraphs(n: int, topic: str) -> bytes:
    return "\n\n".join(f"Paragraph {i} of the {topic} notes: pruning removes weights from a language model, "
                       f"and the text says how much it costs." for i in range(n)).encode()


def upload(at: AppTest, name: str, content: bytes) -> AppTest:
    """Choose "Upload a file…" and drop `content` as `name` on the uploader, as a user does."""
    at.selectbox(key="setup_calib").set_value(UPLOAD).run()
    at.get("file_uploader")[0].set_value((name, content, "text/plain"))
    return no_exception(at.run())


# ------------------------------------------------------------------------------------------------ uploads


def test_a_binary_upload_is_refused_and_the_previous_calibration_text_stays_chosen(app_env):
    at = no_exception(session("setup"))
    upload(at, "notes.txt", b"\x7fELF\x02\x01\x01\x00\x00\x00binary\x00\xff\xfe")
    assert any("notes.txt" in e and "binary" in e for e in errors(at)), errors(at)
    assert at.selectbox(key="setup_calib").value == "news"
    assert at.session_state["settings"]["calib"] == "news"
    assert not any(p.is_file() for p in (app_env / "uploads").rglob("*")), "a refused file must not be stored"
    # The message was about that upload; the next interaction draws the page from the current state only.
    at.number_input(key="setup_nsamples").set_value(5).run()
    assert not errors(no_exception(at)) and "Settings saved" in text_of(at)


def test_an_upload_too_small_for_the_calibration_windows_is_refused_where_it_is_dropped(app_env):
    at = no_exception(session("setup"))  # 4 calibration windows of 32 tokens: 128 tokens needed
    upload(at, "short.txt", b"A short note.\n\nAnother one.\n\nAnd a third.")
    message = next((e for e in errors(at) if "short.txt" in e), None)
    assert message is not None, errors(at)
    assert "calibration text" in message and "Calibration windows" in message
    assert "seqlen" not in message and "evaluation" not in message
    assert at.session_state["settings"]["calib"] == "news"
    assert at.selectbox(key="setup_calib").value == "news"


def test_good_uploads_stay_selectable_under_their_original_names(app_env):
    at = no_exception(session("setup"))
    upload(at, "field notes.txt", paragraphs(60, "field"))
    first = at.session_state["settings"]["calib"]
    assert Path(first).parent == app_env / "uploads" and at.selectbox(key="setup_calib").value == first
    assert not errors(at) and "Settings saved" in text_of(at)
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
    curves = session("curves", {**SMALL, "calib": first})
    assert "calibration **field notes.txt**" in text_of(curves)


def test_setup_says_when_the_chosen_calibration_text_is_too_short_instead_of_settings_saved(app_env):
    at = no_exception(session("setup"))
    upload(at, "notes.txt", paragraphs(60, "field"))
    assert "Settings saved" in text_of(at)
    at.number_input(key="setup_nsamples").set_value(400).run()  # 400 x 32 tokens: more than the file holds
    assert any("calibration text of 'notes.txt'" in e for e in errors(no_exception(at))), errors(at)
    assert "Settings saved" not in text_of(at)
    at.number_input(key="setup_nsamples").set_value(4).run()  # fixed: the message goes
    assert not errors(no_exception(at)) and "Settings saved" in text_of(at)


def test_calibration_tokens_needed_is_the_rule_of_the_core_windows():
    import torch

    from app.services import calibration_tokens_needed
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
    at = no_exception(session("curves", {**SMALL, "calib": str(short)}))
    at.multiselect(key="curves_methods").set_value(["magnitude"])
    at.button(key="curves_run").click().run()
    assert any("The run failed" in e for e in errors(no_exception(at))), errors(at)
    at.session_state["settings"] = dict(SMALL)  # the cause fixed on Setup: a long enough calibration text
    no_exception(at.run())
    assert not errors(at), errors(at)


def _insert_job(kind: str, spec: dict, state: str, result=None, age_s: float = 0.0) -> str:
    from pruning_core.execution.jobs import job_key
    from pruning_core.execution.store import Store

    job_id, now = uuid.uuid4().hex, time.time() - age_s
    Store().insert_job({"id": job_id, "key": job_key(kind, spec), "kind": kind, "spec": spec, "state": state,
                        "fraction": 1.0 if state == "done" else 0.3, "message": state, "created": now,
                        "updated": now, "started": now, "finished": None if state == "running" else now,
                        "result": result, "cancel_requested": 0})
    return job_id


def _sensitivity_result(sparsity: float) -> dict:
    layers, modules = [0, 1], ["q", "k", "v", "o", "gate", "up", "down"]
    values = [[(i + 1) * (j + 1) * sparsity for j in range(len(modules))] for i in range(len(layers))]
    return {"maps": [{"layers": layers, "modules": modules, "values": values, "metric": "reconstruction",
                      "method": "wanda", "sparsity": sparsity, "baseline_loss": 5.6, "layer_values": None,
                      "module_sizes": [[4096] * len(modules) for _ in layers], "protocol": {}, "seconds": 1.0}],
            "correlations": []}


def test_after_cancel_the_newest_finished_map_stays_on_the_page(app_env):
    from app import services

    done_spec = services.sensitivity_spec(SMALL, "wanda", [0.5], ["reconstruction"], 8)
    _insert_job("sensitivity", done_spec, "done", _sensitivity_result(0.5), age_s=60)
    long_spec = services.sensitivity_spec(SMALL, "wanda", [0.5], ["exact"], 64)
    cancelled = _insert_job("sensitivity", long_spec, "cancelled")
    at = AppTest.from_file(PAGE["sensitivity"], default_timeout=120)
    at.session_state["settings"] = dict(SMALL)
    at.session_state["jobs"] = {"sensitivity": cancelled}  # the session followed the run it cancelled
    at.session_state["sens_metrics"], at.session_state["sens_probe"] = ["exact"], 64
    no_exception(at.run())
    assert any("cancelled" in str(w.value) for w in at.warning)
    assert "No map yet" not in text_of(at)
    assert at.get("plotly_chart"), "the finished map must be drawn"
    assert "newest finished map (wanda · 50%)" in text_of(at)


def test_leaving_curves_and_coming_back_keeps_the_form_that_made_the_job_shown(app_env):
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.session_state["settings"] = dict(SMALL)
    no_exception(at.run())
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
    assert "Finished" in text_of(at)  # the panel of the job that form made


def test_a_second_tab_shows_the_form_of_the_running_job(app_env):
    from app import services

    sweep = services.sweep_spec(SMALL, ["magnitude"], ["unstructured", "2:4"], [0.3, 0.7], "dense")
    _insert_job("sweep", sweep, "running")
    at = no_exception(session("curves"))  # a new session: it re-attaches to the running job
    assert at.multiselect(key="curves_methods").value == ["magnitude"]
    assert at.multiselect(key="curves_structures").value == ["unstructured", "2:4"]
    assert at.multiselect(key="curves_sparsities").value == [0.3, 0.7]
    assert at.radio(key="curves_propagation").value == "dense"
    assert "other settings" not in text_of(at)

    sens = services.sensitivity_spec(SMALL, "magnitude", [0.3, 0.6], ["reconstruction", "taylor"], 4)
    _insert_job("sensitivity", sens, "running")
    at = no_exception(session("sensitivity"))
    assert at.selectbox(key="sens_method").value == "magnitude"
    assert at.multiselect(key="sens_sparsities").value == [0.3, 0.6]
    assert at.multiselect(key="sens_metrics").value == ["reconstruction", "taylor"]
    assert at.number_input(key="sens_probe").value == 4


def test_a_reload_keeps_the_corpora_chosen_on_setup(app_env):
    at = no_exception(session("setup"))
    at.multiselect(key="setup_eval").set_value(["news", "pydocs"]).run()
    at.number_input(key="setup_seqlen").set_value(40).run()
    no_exception(at)
    reloaded = no_exception(session("setup", settings=None))  # a new session with nothing preset
    assert reloaded.multiselect(key="setup_eval").value == ["news", "pydocs"]
    assert reloaded.selectbox(key="setup_calib").value == "news"
    assert reloaded.number_input(key="setup_seqlen").value == 40
    other = no_exception(session("curves", settings=None))  # any page of a new session
    assert other.session_state["settings"]["eval_corpora"] == ["news", "pydocs"]
    assert "evaluation **news, pydocs**" in text_of(other)


def test_a_saved_choice_that_no_longer_exists_falls_back_to_the_defaults(app_env):
    from app import services

    gone = app_env / "uploads" / "0123456789ab-gone.txt"
    services.save_settings("tiny-llama", {**SMALL, "calib": str(gone), "eval_corpora": [str(gone), "news"],
                                          "nsamples": -3})
    saved = services.saved_settings("tiny-llama")
    assert "calib" not in saved and saved["eval_corpora"] == ["news"] and "nsamples" not in saved
    assert services.saved_settings("another-model") == {}
    at = no_exception(session("setup", settings=None))
    assert at.session_state["settings"]["calib"] == "wiki"
    assert at.session_state["settings"]["eval_corpora"] == ["news"]

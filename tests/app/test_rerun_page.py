"""A job panel's rerun when its job ends must not undo a page switch the user made at that moment.

Streamlit keeps the newest of two pending rerun requests, and `st.rerun()` asks for the page whose script is
running: called from the Setup page's panel just after the user opened Curves, it replaced the switch (the
address bar said Curves, the page stayed Setup). `widgets.rerun_page` leaves a pending request alone.
"""

from __future__ import annotations

from types import SimpleNamespace

import streamlit as st
import streamlit.runtime.scriptrunner as scriptrunner
from streamlit.runtime.scriptrunner_utils.script_requests import RerunData, ScriptRequests

from app import widgets


def _context(requests: ScriptRequests, monkeypatch) -> list:
    monkeypatch.setattr(scriptrunner, "get_script_run_ctx", lambda *a, **k: SimpleNamespace(script_requests=requests))
    asked: list = []
    monkeypatch.setattr(st, "rerun", lambda *a, **k: asked.append("rerun"))
    return asked


def test_a_pending_page_switch_is_kept(monkeypatch):
    requests = ScriptRequests()
    requests.request_rerun(RerunData(page_script_hash="curves"))  # the user's click on Curves, not yet run
    asked = _context(requests, monkeypatch)
    widgets.rerun_page()
    assert asked == []
    assert requests.on_scriptrunner_ready().rerun_data.page_script_hash == "curves"


def test_without_a_pending_request_the_page_reruns(monkeypatch):
    asked = _context(ScriptRequests(), monkeypatch)
    widgets.rerun_page()
    assert asked == ["rerun"]


def test_outside_a_script_run_the_page_reruns(monkeypatch):
    monkeypatch.setattr(scriptrunner, "get_script_run_ctx", lambda *a, **k: None)
    asked: list = []
    monkeypatch.setattr(st, "rerun", lambda *a, **k: asked.append("rerun"))
    widgets.rerun_page()
    assert asked == ["rerun"]

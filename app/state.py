"""Session state, initialised in one place: the settings every page shares and the job each page follows.

`st.session_state["settings"]` holds the Setup page's choices as plain values (not widget keys, which
Streamlit drops when the page that owns the widget is not shown):
  model (source string), calib, calib_column, eval_corpora, nsamples, seqlen, eval_windows, seed, dtype.
`st.session_state["jobs"]` maps a job kind ("sweep", "sensitivity", "whatif") to the id of the job the page
shows. After a browser reload the session is new; pages then re-attach to the newest job of their kind
(`app.services.latest_job`), so a running job's progress and a finished job's results come back.
"""

from __future__ import annotations

import streamlit as st

SETTINGS = "settings"
JOBS = "jobs"


def default_settings() -> dict:
    """The quick-look defaults: the launcher's model, wiki calibration, wiki + news evaluation."""
    from app.launch import default_model
    from app.services import QUICK

    return {"model": default_model(), "calib": "wiki", "calib_column": None,
            "eval_corpora": ["wiki"], **QUICK}


def init() -> None:
    """Create the shared keys once per session (every page calls this first; later calls change nothing)."""
    if SETTINGS not in st.session_state:
        st.session_state[SETTINGS] = default_settings()
    else:  # keys added later (or a test's partial dict) get their defaults
        for key, value in default_settings().items():
            st.session_state[SETTINGS].setdefault(key, value)
    if JOBS not in st.session_state:
        st.session_state[JOBS] = {}


def settings() -> dict:
    """The shared settings dict (mutable: the Setup page writes into it)."""
    init()
    return st.session_state[SETTINGS]


def update(**values) -> None:
    """Change shared settings (e.g. `update(nsamples=128)`)."""
    settings().update(values)


def job_id(kind: str):
    """The id of the job of `kind` this session follows, or None."""
    init()
    return st.session_state[JOBS].get(kind)


def set_job(kind: str, job_id_: str | None) -> None:
    init()
    st.session_state[JOBS][kind] = job_id_

"""Session state, initialised in one place: the settings every page shares and the job each page follows.

`st.session_state["settings"]` holds the Setup page's choices as plain values (not widget keys, which
Streamlit drops when the page that owns the widget is not shown):
  model (source string), calib, calib_column, eval_corpora, nsamples, seqlen, eval_windows, seed, dtype.
`st.session_state["jobs"]` maps a job kind ("sweep", "sensitivity", "whatif") to the id of the job the page
shows. After a browser reload the session is new; pages then re-attach to the newest job of their kind
(`app.services.jobs.latest_job`), so a running job's progress and a finished job's results come back.

A reload or a second tab is a new session, so the settings are also saved on disk
(`app.services.settings.save_settings`: a small JSON file under $PRUNESCOPE_HOME, keyed by the model the
dashboard was launched on) and a new session starts from them. A file rather than the URL (`st.query_params`): the
sidebar menu drops query parameters when it changes page, a second tab opened from the menu has none, and
upload paths do not belong in a URL; a file also survives a restart of the dashboard. A file rather than
the SQLite store: settings are one small document read once per session, not results with a history.

`st.session_state["forms"]` keeps each task page's form values (plain values, see `remember_form`), because
Streamlit forgets a widget's value when its page is left; on return the page seeds its widgets from them,
or, in a new session, from the spec of the job it re-attaches to, so the form matches the job shown.
"""

from __future__ import annotations

import streamlit as st

SETTINGS = "settings"
JOBS = "jobs"
FORMS = "forms"
_SAVED = "settings_saved"  # the settings as last written to disk by this session (to skip unchanged writes)


def default_settings() -> dict:
    """The quick-look defaults: the launcher's model, wiki calibration, wiki + news evaluation."""
    from app.launch import default_model
    from app.services.settings import QUICK

    return {"model": default_model(), "calib": "wiki", "calib_column": None,
            "eval_corpora": ["wiki"], **QUICK}


def _launch_model() -> str:
    from app.launch import default_model

    return default_model()


def init() -> None:
    """Create the shared keys once per session (every page calls this first; later calls change nothing).

    A new session (first visit, reload, second tab) starts from the settings saved on disk, if any."""
    if SETTINGS not in st.session_state:
        from app.services.settings import saved_settings

        st.session_state[SETTINGS] = {**default_settings(), **saved_settings(_launch_model())}
        st.session_state[_SAVED] = dict(st.session_state[SETTINGS])
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
    """Change shared settings (e.g. `update(nsamples=128)`); a change is saved on disk for the next session."""
    current = settings()
    current.update(values)
    if st.session_state.get(_SAVED) != current:
        from app.services.settings import save_settings

        save_settings(_launch_model(), current)
        st.session_state[_SAVED] = dict(current)


def seed_form(kind: str, defaults: dict, from_job=None) -> None:
    """Give a task page's form widgets their values before they are drawn (widget key -> value).

    Order: the values this session last had on the page (`remember_form`), else `from_job()` (a function
    returning the form values of the job the page re-attaches to, so a reload or a second tab shows the form
    that made the job shown; called only when needed), else `defaults`. Keys Streamlit still holds are left
    alone. Widgets seeded here take no default of their own.
    """
    missing = [key for key in defaults if key not in st.session_state]
    if not missing:
        return
    remembered = st.session_state.get(FORMS, {}).get(kind) or {}
    from_job = (from_job() or {}) if from_job is not None and not remembered else {}
    for key, value in defaults.items():
        if key in st.session_state:
            continue
        if key in remembered:
            st.session_state[key] = remembered[key]
        elif from_job and key in from_job:
            st.session_state[key] = from_job[key]
        else:
            st.session_state[key] = value


def remember_form(kind: str, keys) -> None:
    """Keep the current values of a page's form widgets (by key) for when the page is shown again."""
    st.session_state.setdefault(FORMS, {})[kind] = {k: st.session_state[k] for k in keys if k in st.session_state}


def job_id(kind: str):
    """The id of the job of `kind` this session follows, or None."""
    init()
    return st.session_state[JOBS].get(kind)


def set_job(kind: str, job_id_: str | None) -> None:
    init()
    st.session_state[JOBS][kind] = job_id_

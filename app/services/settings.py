"""The Setup settings: saved on disk so a reload or a second tab opens with them, and THE protocol of every job.

`st.session_state["settings"]` (see `app.state`) holds the Setup page's choices as plain values; every job spec
of every page gets its protocol from them here (`protocol_of`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from app.services.choices import EVAL_DTYPES
from app.services.corpora import is_named
from pruning_core.errors import PruneScopeError
from pruning_core.outputs.files import write_json
from pruning_core.protocol import PAPER_PROTOCOL, QUICK_PROTOCOL, Protocol
from pruning_core.store import home_dir

#: Protocol settings for a quick first look on 2 CPU cores (the paper protocol is one click away).
QUICK = {"nsamples": QUICK_PROTOCOL.nsamples, "seqlen": QUICK_PROTOCOL.seqlen,
         "eval_windows": QUICK_PROTOCOL.eval_windows, "seed": 0, "dtype": "float32"}

PAPER = {"nsamples": PAPER_PROTOCOL.nsamples, "seqlen": PAPER_PROTOCOL.seqlen,
         "eval_windows": PAPER_PROTOCOL.eval_windows, "seed": 0, "dtype": "float32"}


#: The Setup settings, saved so that a reload or a second tab opens with them (see `saved_settings`).
SETTINGS_FILE = "dashboard-settings.json"

_SETTING_FIELDS = ("model", "calib", "calib_column", "eval_corpora", "nsamples", "seqlen", "eval_windows", "seed",
                   "dtype")


def _usable_corpus(name: Any) -> bool:
    return isinstance(name, str) and (is_named(name) or Path(name).is_file())


def saved_settings(launch_model: str) -> dict:
    """The Setup settings last saved for dashboards launched on `launch_model` (empty if none), minus what no
    longer exists (a deleted upload) or is malformed, so a reload never opens on a broken choice."""
    try:
        document = json.loads((home_dir() / SETTINGS_FILE).read_text())
        saved = dict(document[launch_model])
    except (OSError, ValueError, KeyError, TypeError, PruneScopeError):
        return {}
    kept = {k: saved[k] for k in _SETTING_FIELDS if k in saved}
    if not _usable_corpus(kept.get("calib")):
        kept.pop("calib", None)
        kept.pop("calib_column", None)
    evals = [c for c in kept.get("eval_corpora") or [] if _usable_corpus(c)] \
        if isinstance(kept.get("eval_corpora"), list) else []
    if evals:
        kept["eval_corpora"] = evals
    else:
        kept.pop("eval_corpora", None)
    for field in ("nsamples", "seqlen", "eval_windows", "seed"):
        if field in kept and not (isinstance(kept[field], int) and kept[field] >= (0 if field == "seed" else 1)):
            kept.pop(field)
    if kept.get("dtype") not in EVAL_DTYPES:
        kept.pop("dtype", None)
    if not isinstance(kept.get("model"), str) or not kept["model"]:
        kept.pop("model", None)
    return kept


def save_settings(launch_model: str, settings: dict) -> None:
    """Save the Setup settings for dashboards launched on `launch_model` (atomic write; a failure to write is
    not an error a user can act on, so it only costs the restore after a reload)."""
    try:
        path = home_dir() / SETTINGS_FILE
    except PruneScopeError as error:  # the store's problem: the pages say it where they read the store
        print(f"prunescope: could not save the dashboard settings: {error}", file=sys.stderr)
        return
    try:
        document = json.loads(path.read_text()) if path.is_file() else {}
        if not isinstance(document, dict):
            document = {}
    except (OSError, ValueError):
        document = {}
    document[launch_model] = {k: settings.get(k) for k in _SETTING_FIELDS}
    try:
        write_json(path, document)
    except OSError as error:
        print(f"prunescope: could not save the dashboard settings to {path}: {error}", file=sys.stderr)


def protocol_of(settings: dict) -> Protocol:
    """THE Protocol of the dashboard's shared settings (see `app.state`), validated; every job spec of every
    page (sweep, sensitivity, what-if, export) gets its protocol here."""
    proto = Protocol(calib=settings["calib"], nsamples=int(settings["nsamples"]), seqlen=int(settings["seqlen"]),
                     seed=int(settings["seed"]), eval_windows=int(settings["eval_windows"]),
                     dtype=settings["dtype"], calib_column=settings.get("calib_column") or None)
    return proto.validate()


def protocol_dict(settings: dict) -> dict:
    """`protocol_of(settings)` as a dict."""
    return protocol_of(settings).to_dict()


def executor() -> dict | None:
    """The executor the dashboard's sweeps, maps, budget searches and continual runs compute on, stored in each
    job's spec (`ExecutorConfig.to_dict()`), or None for the local one: what `prunescope ui --executor ...` was
    told (its flags default to the PRUNESCOPE_EXECUTOR / _RAY_ADDRESS / _WORKERS variables)."""
    import os

    from app.launch import EXECUTOR_ENV
    from pruning_core.executors.base import ExecutorConfig

    text = os.environ.get(EXECUTOR_ENV)
    config = ExecutorConfig.from_dict(json.loads(text)).validate() if text else ExecutorConfig.from_env()
    return None if config.kind == "local" else config.to_dict()


def with_executor(spec: dict) -> dict:
    """`spec` with the dashboard's executor (`executor()`), when it is not the local one (no job key changes:
    keys leave the executor out)."""
    found = executor()
    return {**spec, "executor": found} if found else spec

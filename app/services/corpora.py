"""Corpora: previews and token counts (cached), the uploaded files, and the checks that a text is long enough.

Embedded and hub corpora are named; a file corpus is a path (an upload is stored under
`$PRUNESCOPE_HOME/uploads` as "<content hash>-<original name>" and shown by its original name).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Optional

import streamlit as st

from app.services.models import get_model, identity_key
from pruning_core import data as core_data
from pruning_core.errors import CorpusError
from pruning_core.store import home_dir

EMBEDDED_CORPORA = tuple(core_data.EMBEDDED_CORPORA)
HUB_CORPORA = tuple(core_data.HUB_CORPORA)


def _file_stamp(name: str) -> tuple:
    path = Path(name).expanduser()
    if path.is_file():
        stat = path.stat()
        return (stat.st_mtime_ns, stat.st_size)
    return ()


@st.cache_data(show_spinner=False, max_entries=64)
def _preview(name: str, split: str, column: Optional[str], stamp: tuple) -> dict:
    return core_data.preview(name, split, column)


def corpus_preview(name: str, split: str = "calibration", column: Optional[str] = None) -> dict:
    """{"text" (first 600 characters), "chars", "documents"} of a corpus split (cached; files by mtime)."""
    return _preview(name, split, column, _file_stamp(name))


@st.cache_data(show_spinner="Counting tokens…", max_entries=64)
def _token_count(source: str, identity_key: str, name: str, split: str, column: Optional[str], stamp: tuple) -> int:
    loaded = get_model(source)
    text = core_data.load_corpus_text(name, split, column)
    return int(core_data.token_ids(loaded.tokenizer, text).numel())


def token_count(source: str, name: str, split: str = "calibration", column: Optional[str] = None) -> int:
    """Number of tokens of a corpus split under the model's tokenizer (cached)."""
    return _token_count(source, identity_key(source), name, split, column, _file_stamp(name))


def uploads_dir() -> Path:
    """Where uploaded corpus files are saved: `$PRUNESCOPE_HOME/uploads`."""
    folder = home_dir() / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


#: A stored upload is named "<12 hex digits of its content's sha256>-<original file name>".


def uploaded_corpora() -> list[str]:
    """The paths of the files saved by `save_upload`, newest first (every one passed its checks on entry)."""
    files = [p for p in uploads_dir().iterdir() if p.is_file() and core_data.HASH_PREFIXED_NAME.match(p.name)]
    return [str(p) for p in sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)]


def corpus_label(name: str) -> str:
    """How a corpus is named on a page: embedded and hub corpora by name, an upload by its original file
    name (the content-hash prefix stays in the stored path only), any other file by its file name."""
    return core_data.corpus_display_name(name)


def corpus_labels(names: list[str]) -> dict[str, str]:
    """`corpus_label` of each name, made unique: uploads that share an original name get their upload time."""
    labels = {name: corpus_label(name) for name in names}
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    for name, label in labels.items():
        if counts[label] > 1 and is_file(name):
            stamp = time.strftime("%d %b %H:%M:%S", time.localtime(Path(name).stat().st_mtime))
            labels[name] = f"{label} (uploaded {stamp})"
    return labels


def is_named(name: str) -> bool:
    """Whether a corpus is an embedded or a hub corpus (a name, not a file)."""
    return name in EMBEDDED_CORPORA or name in HUB_CORPORA


def is_file(name: str) -> bool:
    """Whether a corpus name is an existing file (an upload or a path), not an embedded or hub corpus."""
    return not is_named(name) and Path(name).expanduser().is_file()


def _safe_file_name(filename: str) -> str:
    """The original name as the browser sent it, minus anything that could leave the uploads folder."""
    name = Path(filename.replace("\\", "/")).name
    name = "".join(c if c.isprintable() and c != "/" else "_" for c in name).lstrip(". ")
    stem, suffix = (name[: -len(Path(name).suffix)], Path(name).suffix) if Path(name).suffix else (name, "")
    suffix = suffix[:16]
    while len((stem + suffix).encode()) > 180:  # with the hash prefix, under the 255-byte limit of file names
        stem = stem[:-1]
    name = stem + suffix
    return name or "upload.txt"


#: Tokens a calibration text needs for the chosen windows: the core's own rule (`pruning_core.data`).
calibration_tokens_needed = core_data.calibration_tokens_needed


def _require_calibration_tokens(tokens: int, settings: dict, label: str, user_file: bool) -> None:
    """Raise CorpusError, worded for the Setup page (its labels, no internal names), when `tokens` of
    calibration text are too few for the chosen calibration windows."""
    nsamples, seqlen = int(settings["nsamples"]), int(settings["seqlen"])
    needed = calibration_tokens_needed(nsamples, seqlen)
    if tokens < needed:
        share = f" (its first {core_data.CALIBRATION_FRACTION:.0%})" if user_file else ""
        raise CorpusError(
            f"The calibration text of '{label}'{share} has {tokens:,} tokens, too few for {nsamples} calibration "
            f"windows of {seqlen} tokens ({needed:,} tokens): use a longer text, or lower 'Calibration windows' "
            f"or 'Tokens per window' under Protocol.")


def check_calibration_fits(settings: dict) -> int:
    """The chosen calibration text's token count (the model's tokenizer, cached); raises CorpusError, worded
    for the Setup page, when it is too short for the chosen calibration windows."""
    name = settings["calib"]
    tokens = token_count(settings["model"], name, "calibration", settings.get("calib_column") or None)
    _require_calibration_tokens(tokens, settings, corpus_label(name), not is_named(name))
    return tokens


def check_evaluation_fits(settings: dict) -> dict[str, int]:
    """Token counts of the chosen evaluation files; raises CorpusError, worded for the Setup page, when one
    holds less than one window of the chosen length (embedded corpora hold hundreds; hub corpora are checked
    when they load)."""
    seqlen = int(settings["seqlen"])
    counts = {}
    for name in settings["eval_corpora"]:
        if not is_file(name):
            continue
        tokens = counts[name] = token_count(settings["model"], name, "evaluation")
        if tokens < seqlen:  # perplexity needs one whole window (`pruning_core.data.consecutive_token_windows`)
            raise CorpusError(
                f"The evaluation text of '{corpus_label(name)}' (its last "
                f"{1 - core_data.CALIBRATION_FRACTION:.0%}) has {tokens:,} tokens, fewer than one window of "
                f"{seqlen} tokens: use a longer text, or lower 'Tokens per window' under Protocol.")
    return counts


def save_upload(filename: str, content: bytes, settings: Optional[dict] = None, column: Optional[str] = None) -> str:
    """Check an uploaded corpus file and save it under `uploads_dir()`; return its stored path.

    The stored name is "<content hash>-<original name>" (`corpus_label` shows the original name). The file is
    read with `pruning_core.data` first (binary, empty, unreadable or malformed content is refused with its
    one-sentence reason), and with `settings` (the Setup choices: model and protocol) its calibration text must
    hold enough tokens for the chosen calibration windows. A refused file is never stored, so it cannot be
    chosen. Raises PruneScopeError (CorpusError, ConfigError) with the reason.
    """
    import hashlib
    import shutil

    digest = hashlib.sha256(content).hexdigest()[:12]
    original = _safe_file_name(filename)
    path = uploads_dir() / f"{digest}-{original}"
    # Checked under its original name (so messages name it as the user knows it) in a private folder, then
    # moved in when accepted.
    folder = uploads_dir() / ".incoming" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    incoming = folder / original
    incoming.write_bytes(content)
    try:
        for split in core_data.SPLITS:  # readable text with documents in both splits
            core_data.preview(str(incoming), split, column or None)
        if settings is not None and settings.get("model"):
            text = core_data.load_corpus_text(str(incoming), "calibration", column or None)
            tokens = int(core_data.token_ids(get_model(settings["model"]).tokenizer, text).numel())
            _require_calibration_tokens(tokens, settings, original, user_file=True)
        os.replace(incoming, path)  # the same content again: same name, refreshed time (listed first)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return str(path)

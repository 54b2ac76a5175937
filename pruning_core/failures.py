"""One sentence for failures that do not come from PruneScope's own checks: the store's database, the disk and
the file system, Python's limits. The command line and the dashboard print `explain(exc)` instead of a traceback.

PruneScope's own errors (`errors.PruneScopeError`) already carry their sentence; this module covers what the
libraries underneath raise, so that a corrupt store, a read-only or full disk, a held lock or a too-deep file
reads as what happened and what to do.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from pruning_core.errors import PruneScopeError
from pruning_core.home import ENV_HOME, home_dir


def _store_path() -> str:
    return os.environ.get("PRUNESCOPE_STORE") or str(home_dir(create=False) / "prunescope.sqlite")


def _sqlite_sentence(exc: sqlite3.Error) -> str:
    text = str(exc).lower()
    store = _store_path()
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return (f"The store {store} is damaged (not a readable SQLite database); move it away (results stored in "
                f"it are lost to PruneScope) or set {ENV_HOME} to another folder.")
    if "locked" in text or "busy" in text:
        return (f"The store {store} stayed locked by another PruneScope process for longer than the wait allows; "
                "let that run finish (or stop it with `prunescope jobs --cancel`) and try again.")
    if "readonly" in text or "read-only" in text:
        return (f"The store {store} is read-only; make its folder writable or set {ENV_HOME} to a writable folder.")
    if "full" in text:
        return f"The disk holding the store {store} is full; free space and run again (finished results are kept)."
    if "unable to open" in text:
        return (f"The store {store} cannot be opened; check that {ENV_HOME} is a writable folder (not a file).")
    return f"The store {store} failed ({exc}); run again, or set {ENV_HOME} to another folder."


def _os_sentence(exc: OSError) -> str:
    where = f" '{exc.filename}'" if getattr(exc, "filename", None) else ""
    code = exc.errno
    if code == errno.ENOSPC:
        return f"The disk is full while writing{where}; free space and run again (finished results are kept)."
    if code == errno.EROFS:
        return f"Cannot write{where}: the file system is read-only; choose a folder on a writable disk."
    if code in (errno.EACCES, errno.EPERM):
        return f"Permission denied for{where}; choose a folder you may write to."
    if code == errno.ENAMETOOLONG:
        return f"The path{where} is too long for the file system; choose a shorter name."
    if code == errno.ENOTDIR:
        return f"A part of the path{where} is a file, not a folder; choose another path."
    if code == errno.EEXIST or isinstance(exc, FileExistsError):
        return f"{where.strip() or 'A path'} already exists as a file; choose another path."
    if code == errno.ENOENT:
        return f"No such file or folder{where}; check the path."
    return f"A file operation failed{where} ({exc.strerror or type(exc).__name__}); check the path and the disk."


def explain(exc: BaseException) -> str | None:
    """The one sentence for `exc`, or None for an unexpected failure (a bug to report, with its traceback)."""
    if isinstance(exc, PruneScopeError):
        return str(exc)
    if isinstance(exc, sqlite3.Error):
        return _sqlite_sentence(exc)
    if isinstance(exc, OSError):
        return _os_sentence(exc)
    if isinstance(exc, RecursionError):
        return "The input is nested too deeply to read (a file of nested lists or objects?); give a flat file."
    if isinstance(exc, MemoryError):
        return ("This machine ran out of memory; use fewer calibration windows (--nsamples), a shorter --seqlen, "
                "or --dtype bfloat16.")
    return None


def failure_log(exc: BaseException, traceback_text: str) -> Path | None:
    """Write the traceback of an unexpected failure to `$PRUNESCOPE_HOME/logs/failure-<time>.log`; its path, or
    None when even that cannot be written."""
    import time

    try:
        folder = home_dir(create=False) / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"failure-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text(traceback_text)
        return path
    except OSError:
        return None

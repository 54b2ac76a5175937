"""Writing output files safely (a file or a folder is either the old one or the whole new one, never a mix),
and turning results into plain JSON."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pruning_core.errors import ConfigError

#: Written into every folder PruneScope writes whole, so that a later run may replace that folder (and only such
#: a folder: one that holds anything else is never deleted).
MARKER = ".prunescope-output"


def write_json(path: Path, document: dict) -> None:
    """Write JSON atomically (temporary file + rename), so a crash never leaves half a file."""
    write_text(path, json.dumps(document, indent=2, default=str))


def write_text(path: Path, text: str) -> Path:
    """Write UTF-8 text atomically (temporary file + rename); returns the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _os_problem(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def written_by_prunescope(folder: Path) -> bool:
    """Whether `folder` is one PruneScope wrote: it holds the marker, or (written before the marker existed)
    a PruneScope mask manifest."""
    from pruning_core.mask_files import FORMAT, MANIFEST_FILE  # the mask format's own names, not a copy

    if (folder / MARKER).exists():
        return True
    try:
        return json.loads((folder / MANIFEST_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_output_folder(path, what: str = "the output folder") -> Path:
    """Refuse, in one sentence, an output folder that cannot be written whole: an existing file, a folder that
    holds files PruneScope did not write, or a parent that cannot be created or written. Returns the path."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{what} '{path}' is an existing file; give a folder path.")
    if out.is_dir() and any(out.iterdir()) and not written_by_prunescope(out):
        raise ConfigError(f"{what} '{path}' already holds files PruneScope did not write; give a new or empty "
                          "folder (PruneScope replaces only folders it wrote).")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{what} '{path}' cannot be created ({_os_problem(exc)}); give a folder in a writable "
                          "place.") from None
    if not os.access(out.parent, os.W_OK):
        raise ConfigError(f"{what} '{path}' cannot be written: its parent folder is read-only; give a folder in a "
                          "writable place.")
    return out


@contextlib.contextmanager
def folder_written_whole(path, what: str = "the output folder") -> Iterator[Path]:
    """Yield a fresh temporary folder beside `path`; when the block ends without error it replaces `path`
    whole (one rename), else it is deleted and `path` is left as it was. A crash in between leaves only a
    hidden `.name.partial-*` folder, never a folder that looks complete."""
    out = check_output_folder(path, what)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise ConfigError(f"{what} '{path}' cannot be written ({_os_problem(exc)}); give a folder in a writable "
                          "place.") from None
    try:
        yield tmp
        (tmp / MARKER).write_text("written whole by PruneScope; a later run may replace this folder\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; an output folder is meant to be shared
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def relocated(value: Any, temporary, final) -> Any:
    """`value` (a result: dicts, lists, strings, paths) with every path inside the folder `temporary` named at
    `final` instead, where `folder_written_whole` moves it: results report where the files are, not where they
    were written."""
    old, new = str(temporary), str(final)
    if isinstance(value, (str, Path)):
        text = str(value)
        if text == old or text.startswith(old + os.sep):
            moved = new + text[len(old):]
            return Path(moved) if isinstance(value, Path) else moved
        return value
    if isinstance(value, dict):
        return {k: relocated(v, temporary, final) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(relocated(v, temporary, final) for v in value)
    return value


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, inf: not JSON) replaced by None and every key made a string."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def json_default(value: Any) -> Any:
    """`json.dumps` default: arrays and tensors as lists, anything else as its text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)

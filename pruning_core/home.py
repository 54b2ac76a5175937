"""PruneScope's data folder, the one owner of `$PRUNESCOPE_HOME`.

Everything PruneScope keeps between runs lives below it: the store (`prunescope.sqlite`), artifacts, converted
models (`models/`), uploads and exports. Every module asks here, so that the rule (the variable, `~` expanded,
else `~/.cache/prunescope`) cannot drift between two copies.
"""

from __future__ import annotations

import os
from pathlib import Path

from pruning_core.errors import PruneScopeError

ENV_HOME = "PRUNESCOPE_HOME"


def home_dir(create: bool = True) -> Path:
    """The data folder: `$PRUNESCOPE_HOME` (with `~` expanded), else `~/.cache/prunescope`; created if missing
    unless `create` is False."""
    env = os.environ.get(ENV_HOME)
    home = Path(env).expanduser() if env else Path.home() / ".cache" / "prunescope"
    if home.exists() and not home.is_dir():
        raise PruneScopeError(f"PruneScope's data folder {home} is a file; set {ENV_HOME} to a folder.")
    if create:
        try:
            home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PruneScopeError(f"PruneScope's data folder {home} cannot be created ({exc.strerror}); set "
                                  f"{ENV_HOME} to a writable folder.") from None
    return home

"""Writing output files safely."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json(path: Path, document: dict) -> None:
    """Write JSON atomically (temporary file + rename), so a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str))
    os.replace(tmp, path)

"""Writing output files safely, and turning results into plain JSON."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


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

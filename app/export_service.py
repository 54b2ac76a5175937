"""Export service: runs the export pipeline (`pruning_core.cli_export.run_export`) for the Export page.

The page imports only this module (plus app.charts and app.theme). Exports go to
``$PRUNESCOPE_HOME/exports/<hash of the setting>/`` so a page reload finds the files again; the shared,
cached model is never left mutated (run_export applies masks inside context managers).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import streamlit as st

from pruning_core.cli_export import DEFAULT_PROMPTS, ExportOptions, run_export
from pruning_core.errors import PruneScopeError
from pruning_core.lm_eval_bridge import LOCAL_TASKS
from pruning_core.protocol import QUICK_PROTOCOL, Protocol
from pruning_core.report import summary_sentences
from pruning_core.store import content_hash, home_dir

METHODS = ("wanda", "sparsegpt", "magnitude")
STRUCTURES = ("unstructured", "2:4", "4:8")
CORPORA = ("wiki", "news", "pydocs")
MIME = {".json": "application/json", ".md": "text/markdown", ".html": "text/html", ".pdf": "application/pdf",
        ".safetensors": "application/octet-stream", ".yaml": "application/x-yaml", ".zip": "application/zip"}

__all__ = [
    "CORPORA",
    "DEFAULT_PROMPTS",
    "LOCAL_TASKS",
    "METHODS",
    "STRUCTURES",
    "PruneScopeError",
    "download_items",
    "export",
    "settings_from",
    "summary_sentences",
    "zip_folder",
]


def settings_from(session: dict) -> dict:
    """The Setup page's choices (``st.session_state["settings"]``) if present, else the quick defaults."""
    given = dict(session.get("settings") or {})
    model = given.get("model") or os.environ.get("PRUNESCOPE_DEFAULT_MODEL", "").strip() or "embedded"
    return {
        "model": model,
        "calib": given.get("calib", "wiki"),
        "calib_column": given.get("calib_column"),
        "nsamples": int(given.get("nsamples", QUICK_PROTOCOL.nsamples)),
        "seqlen": int(given.get("seqlen", QUICK_PROTOCOL.seqlen)),
        "eval_windows": int(given.get("eval_windows", QUICK_PROTOCOL.eval_windows)),
        "seed": int(given.get("seed", 0)),
        "dtype": given.get("dtype", "float32"),
        "eval_corpora": list(given.get("eval_corpora") or ["wiki"]),
    }


def _model(source: str):
    try:  # share the dashboard's cached model when the services module is there
        from app.services import get_model
    except ImportError:
        return _own_model(source)
    return get_model(source)


@st.cache_resource(show_spinner="Loading the model…", max_entries=1)
def _own_model(source: str):
    from pruning_core.models import load_model

    return load_model(source)


def export(settings: dict, options: dict, progress: Callable[[float, str], None] | None = None) -> dict:
    """Run the export; returns {"folder", "files": [{name, path, bytes, mime}], "summary", "report"}.

    options: ExportOptions fields (method, structure, sparsity, prompts, heatmap, recipe, save_model, pdf,
    lm_eval_tasks, lm_eval_limit...). Raises PruneScopeError with a message for the page to show.
    """
    protocol = Protocol(calib=settings["calib"], nsamples=settings["nsamples"], seqlen=settings["seqlen"],
                        seed=settings["seed"], eval_windows=settings["eval_windows"], dtype=settings["dtype"],
                        calib_column=settings.get("calib_column")).validate()
    opts = ExportOptions(**{**options, "eval_corpora": tuple(settings["eval_corpora"])})
    folder = home_dir() / "exports" / content_hash({"settings": settings, "options": vars(opts)})[:16]
    loaded = _model(settings["model"])
    outcome = run_export(loaded, protocol, opts, folder, progress)
    return {"folder": str(folder), "files": download_items(folder), "summary": summary_sentences(outcome["report"]),
            "report": outcome["report"]}


def zip_folder(folder: Path) -> bytes:
    """A folder (the pruned model) as zip bytes, for one download button."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder.parent))
    return buffer.getvalue()


def download_items(folder) -> list[dict]:
    """Files of an export folder in a stable order, with MIME types; the model folder becomes one zip."""
    folder = Path(folder)
    order = ["report.html", "report.pdf", "report.md", "report.json", "masks.safetensors", "manifest.json",
             "recipe.yaml", "lm_eval.json"]
    items = []
    for name in order:
        path = folder / name
        if path.is_file():
            items.append({"name": name, "path": str(path), "bytes": path.stat().st_size,
                          "mime": MIME.get(path.suffix, "application/octet-stream")})
    model_dir = folder / "pruned-model"
    if model_dir.is_dir():
        items.append({"name": "pruned-model.zip", "path": str(model_dir), "bytes": None, "mime": MIME[".zip"],
                      "zip": True})
    return items


def file_bytes(item: dict) -> bytes:
    """The bytes to hand to st.download_button for one item of `download_items`."""
    if item.get("zip"):
        return zip_folder(Path(item["path"]))
    return Path(item["path"]).read_bytes()

"""Export service: the Export page's job spec and how a finished export job is shown.

The export runs as a job (`pruning_core.outputs.pipeline.run_export_job`, in a worker process like sweeps and maps),
so it survives a reload and can be cancelled. Exports go to ``$PRUNESCOPE_HOME/exports/<hash of the setting>/``,
so a page reload finds the files again.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import asdict
from pathlib import Path

from pruning_core.outputs.pipeline import DEFAULT_PROMPTS, ExportOptions
from pruning_core.errors import PruneScopeError
from pruning_core.outputs.lm_eval_bridge import LOCAL_TASKS
from pruning_core.protocol import QUICK_PROTOCOL, Protocol
from pruning_core.outputs.report import summary_sentences
from pruning_core.execution.store import content_hash, home_dir

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
    "export_result",
    "export_spec",
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


def export_spec(settings: dict, options: dict) -> dict:
    """The export job spec for the Setup choices and the page's options (ExportOptions fields).

    Raises PruneScopeError (ConfigError) for a bad protocol or option, with a message for the page.
    """
    protocol = Protocol(calib=settings["calib"], nsamples=settings["nsamples"], seqlen=settings["seqlen"],
                        seed=settings["seed"], eval_windows=settings["eval_windows"], dtype=settings["dtype"],
                        calib_column=settings.get("calib_column")).validate()
    opts = ExportOptions(**{**options, "eval_corpora": tuple(settings["eval_corpora"])})
    folder = home_dir() / "exports" / content_hash({"settings": settings, "options": vars(opts)})[:16]
    as_json = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(opts).items()}
    return {"model": settings["model"], "protocol": protocol.to_dict(), "options": as_json, "out_dir": str(folder)}


def export_result(job_result: dict) -> dict:
    """What the page shows of a finished export job: {"folder", "files", "summary", "report"}."""
    report = job_result["report"]
    return {"folder": job_result["folder"], "files": download_items(job_result["folder"]),
            "summary": summary_sentences(report), "report": report}


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

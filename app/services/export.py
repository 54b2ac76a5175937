"""Export: the Export page's job spec and form, how a finished export is shown, and the reports and files a
page hands over for download.

The export runs as a job (`pruning_core.export.pipeline.run_export_job`, in a worker process like sweeps and maps),
so it survives a reload and can be cancelled. Exports go to ``$PRUNESCOPE_HOME/exports/<hash of the setting>/``,
so a page reload finds the files again.

What is exported: a new setting (method, structure, sparsity, propagation; pre-filled from the Summary's
recommendation when the Summary hands one over, see `app.services.navigation`), or a stored What-if mask exactly
as the What-if made it (per-layer sparsities included). The dense perplexity is reused from the store when
measured before.
"""

from __future__ import annotations

import io
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Optional

from app.services.forms import PageForm
from app.services.jobs import recent_results
from app.services.settings import protocol_of
from pruning_core.analysis.whatif import WhatIfSpec
from pruning_core.errors import ConfigError, PruneScopeError  # noqa: F401 - the page catches PruneScopeError
from pruning_core.export.pipeline import DEFAULT_PROMPTS, ExportOptions  # noqa: F401 - the page's defaults
from pruning_core.methods import METHODS as METHOD_REGISTRY
from pruning_core.outputs.lm_eval_bridge import LOCAL_TASKS  # noqa: F401 - the page's lm-eval choice
from pruning_core.outputs.report import render_html, summary_sentences
from pruning_core.prune import PROPAGATION_NOTES
from pruning_core.store import content_hash, home_dir

PROPAGATIONS = tuple(PROPAGATION_NOTES)
NEW_SETTING = "A new setting (chosen below)"
MIME = {".json": "application/json", ".md": "text/markdown", ".html": "text/html", ".pdf": "application/pdf",
        ".safetensors": "application/octet-stream", ".yaml": "application/x-yaml", ".zip": "application/zip"}


@dataclass
class ExportForm(PageForm):
    """The Export form's setting: widgets "export_<field>" (the Summary's recommendation fills them in)."""

    PREFIX: ClassVar[str] = "export_"
    method: str = "wanda"
    structure: str = "unstructured"
    sparsity: float = 0.5
    propagation: str = "pruned"

    def to_spec(self, settings: dict, options: dict) -> dict:
        """The export job spec of this setting with the page's output options (`export_spec`)."""
        return export_spec(settings, {**options, "method": self.method, "structure": self.structure,
                                      "sparsity": float(self.sparsity), "propagation": self.propagation})


def _folder_for(spec_core: dict) -> str:
    return str(home_dir() / "exports" / content_hash(spec_core)[:16])


def _options_json(opts: ExportOptions) -> dict:
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(opts).items()}
    if out.get("layer_sparsity"):
        out["layer_sparsity"] = {str(k): float(v) for k, v in out["layer_sparsity"].items()}
    return out


def export_spec(settings: dict, options: dict) -> dict:
    """The export job spec for the shared settings (protocol from `protocol_of`, the one conversion
    of dashboard settings) and the page's options (ExportOptions fields).

    Raises PruneScopeError (ConfigError) for a bad protocol or option, with a message for the page.
    """
    protocol = protocol_of(settings)
    opts = ExportOptions(**{**options, "eval_corpora": tuple(settings["eval_corpora"])})
    if opts.method not in METHOD_REGISTRY:
        raise ConfigError(f"Unknown method '{opts.method}'; choose one of {', '.join(METHOD_REGISTRY)}.")
    if opts.propagation not in PROPAGATIONS:
        raise ConfigError(f"Propagation '{opts.propagation}' is unknown; use one of {', '.join(PROPAGATIONS)}.")
    as_json = _options_json(opts)
    folder = _folder_for({"settings": settings, "options": as_json})
    return {"model": settings["model"], "protocol": protocol.to_dict(), "options": as_json, "out_dir": folder}


def _whatif_label(item: dict) -> str:
    cfg, result = item["result"]["config"], item["result"]
    layers = " per-layer" if cfg.get("layer_sparsity") else ""
    target = cfg["structure"] if cfg["structure"] != "unstructured" else f"{float(cfg['sparsity']):.0%}{layers}"
    return (f"What-if mask: {cfg['method']} {target} (measured {float(result['sparsity']):.1%}, "
            f"mask {result['mask_artifact'][:8]})")


def whatif_sources(model: str) -> list[dict]:
    """Finished What-if results of `model` whose mask is stored and exportable, newest first:
    [{"label", "spec", "result"}]. A SparseGPT mask needs its stored updated weights (What-ifs run before
    they were stored are left out)."""
    out, seen = [], set()
    for item in recent_results("whatif", model):
        result = item["result"]
        artifact = result.get("mask_artifact")
        config = result.get("config") or {}
        if not artifact or artifact in seen or not config:
            continue
        method = METHOD_REGISTRY.get(config.get("method", ""))
        if method is None or (method.updates_weights and not result.get("weights_artifact")):
            continue
        seen.add(artifact)
        out.append({"label": _whatif_label(item), "spec": item["spec"], "result": result})
    return out


def whatif_export_spec(source: dict, options: dict) -> dict:
    """The export job spec for a stored What-if mask: its model, protocol, corpora and setting (per-layer
    sparsities or its sparsity plan included) as the What-if ran them, with the page's output options."""
    spec, result = source["spec"], source["result"]
    config = result["config"]
    setting = {"method": config["method"], "structure": config["structure"], "sparsity": float(config["sparsity"]),
               "propagation": config.get("propagation", "pruned"), "layer_sparsity": config.get("layer_sparsity"),
               "mask_artifact": result["mask_artifact"], "weights_artifact": result.get("weights_artifact")}
    if config.get("plan"):  # a What-if run with a plan: the manifest records the plan and who made it
        setting.update(plan=config["plan"], layer_sparsity=None)
    whatif = WhatIfSpec.from_dict(spec)
    protocol = whatif.protocol.validate()
    opts = ExportOptions(**{**options, **setting, "eval_corpora": whatif.corpora})
    as_json = _options_json(opts)
    folder = _folder_for({"model": whatif.model, "protocol": protocol.to_dict(), "options": as_json})
    return {"model": whatif.model, "protocol": protocol.to_dict(), "options": as_json, "out_dir": folder}


def evaluation_note(report: dict) -> str:
    """Which mask and which propagation produced the export's perplexities, and whether the dense one was
    reused; explains why a Curves point (maybe in dense propagation) can read slightly differently."""
    s = report.get("setting") or {}
    propagation = s.get("propagation", "pruned")
    other = "dense" if propagation == "pruned" else "pruned"
    note = (f"These perplexities come from {propagation} propagation. A Curves point measured in {other} "
            "propagation has slightly different masks, so its perplexity for the same method and sparsity can "
            "differ a little; choose the propagation above to match it.")
    cached = (report.get("evaluation") or {}).get("dense_cached") or []
    if cached:
        note += f" The dense perplexity on {', '.join(cached)} was reused from the store (measured earlier)."
    return note


def export_result(job_result: dict) -> dict:
    """What the page shows of a finished export job: {"folder", "files", "summary", "report"}."""
    report = job_result["report"]
    return {"folder": job_result["folder"], "files": download_items(job_result["folder"]),
            "summary": summary_sentences(report), "report": report}


def zip_folder(folder: Path, root: Optional[str] = None, recursive: bool = True) -> bytes:
    """A folder's files as zip bytes, for one download button, under `root/` in the archive (default: the
    folder's own name); with `recursive` False, only the files directly in it."""
    folder = Path(folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*") if recursive else folder.iterdir()):
            if path.is_file():
                archive.write(path, str(Path(root or folder.name) / path.relative_to(folder)))
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


def report_html(data: dict) -> str:
    """A capability's report data (`*_report_data`) as the self-contained HTML report the CLI and the export
    write, dated now if the data carries no date."""
    data.setdefault("generated", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    return render_html(data)

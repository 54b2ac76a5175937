"""Export service: the Export page's job spec and how a finished export job is shown.

The export runs as a job (`pruning_core.export.pipeline.run_export_job`, in a worker process like sweeps and maps),
so it survives a reload and can be cancelled. Exports go to ``$PRUNESCOPE_HOME/exports/<hash of the setting>/``,
so a page reload finds the files again.

What is exported: a new setting (method, structure, sparsity, propagation; pre-filled from the Summary's
recommendation when the Summary hands one over), or a stored What-if mask exactly as the What-if made it
(per-layer sparsities included). The dense perplexity is reused from the store when measured before.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import asdict
from pathlib import Path

from app import services
from pruning_core.analysis.whatif import WhatIfSpec
from pruning_core.errors import ConfigError, PruneScopeError
from pruning_core.store import content_hash, home_dir
from pruning_core.methods import METHODS as METHOD_REGISTRY
from pruning_core.outputs.lm_eval_bridge import LOCAL_TASKS
from pruning_core.export.pipeline import DEFAULT_PROMPTS, ExportOptions
from pruning_core.outputs.report import summary_sentences
from pruning_core.prune import PROPAGATION_NOTES

METHODS = services.METHODS
STRUCTURES = services.STRUCTURES
PROPAGATIONS = tuple(PROPAGATION_NOTES)
#: Session key the Summary page sets to hand its recommended point to this page.
PREFILL_KEY = "export_prefill"
#: Widget keys of the Export form that a Summary recommendation fills in.
PREFILL_WIDGETS = {"method": "export_method", "structure": "export_structure", "sparsity": "export_sparsity",
                   "propagation": "export_propagation"}
FORM_DEFAULTS = {"export_method": "wanda", "export_structure": "unstructured", "export_sparsity": 0.5,
                 "export_propagation": "pruned"}
NEW_SETTING = "A new setting (chosen below)"
MIME = {".json": "application/json", ".md": "text/markdown", ".html": "text/html", ".pdf": "application/pdf",
        ".safetensors": "application/octet-stream", ".yaml": "application/x-yaml", ".zip": "application/zip"}

__all__ = [
    "DEFAULT_PROMPTS",
    "LOCAL_TASKS",
    "METHODS",
    "NEW_SETTING",
    "PREFILL_KEY",
    "PROPAGATIONS",
    "STRUCTURES",
    "PruneScopeError",
    "apply_prefill",
    "download_items",
    "evaluation_note",
    "export_result",
    "export_spec",
    "recommendation_prefill",
    "send_to_export",
    "summary_sentences",
    "whatif_export_spec",
    "whatif_sources",
    "zip_folder",
]


def _folder_for(spec_core: dict) -> str:
    return str(home_dir() / "exports" / content_hash(spec_core)[:16])


def _options_json(opts: ExportOptions) -> dict:
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(opts).items()}
    if out.get("layer_sparsity"):
        out["layer_sparsity"] = {str(k): float(v) for k, v in out["layer_sparsity"].items()}
    return out


def export_spec(settings: dict, options: dict) -> dict:
    """The export job spec for the shared settings (protocol from `services.protocol_of`, the one conversion
    of dashboard settings) and the page's options (ExportOptions fields).

    Raises PruneScopeError (ConfigError) for a bad protocol or option, with a message for the page.
    """
    protocol = services.protocol_of(settings)
    opts = ExportOptions(**{**options, "eval_corpora": tuple(settings["eval_corpora"])})
    if opts.method not in METHOD_REGISTRY:
        raise ConfigError(f"Unknown method '{opts.method}'; choose one of {', '.join(METHOD_REGISTRY)}.")
    if opts.propagation not in PROPAGATIONS:
        raise ConfigError(f"Propagation '{opts.propagation}' is unknown; use one of {', '.join(PROPAGATIONS)}.")
    as_json = _options_json(opts)
    folder = _folder_for({"settings": settings, "options": as_json})
    return {"model": settings["model"], "protocol": protocol.to_dict(), "options": as_json, "out_dir": folder}


# ------------------------------------------------------------------------------------ What-if masks


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
    for item in services.recent_results("whatif", model):
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


# ----------------------------------------------------------------------------- Summary recommendation


def recommendation_prefill(point: dict) -> dict:
    """What the Summary hands to this page for a recommended sweep point: method, structure, sparsity (the
    target, a slider value) and the propagation the point was measured with."""
    structure = point.get("structure", "unstructured")
    sparsity = float(point.get("target_sparsity") or point.get("sparsity") or 0.5)
    return {"method": point["method"], "structure": structure,
            "sparsity": min(0.9, max(0.1, round(sparsity * 20) / 20)),
            "propagation": point.get("propagation") or "pruned"}


#: The Export page's path, relative to the main script (app/main.py) and to a page run alone (pages/x.py).
EXPORT_PAGE = "../pages/export.py"


def send_to_export(point: dict) -> None:
    """Hand a recommended sweep point to the Export page (pre-filled there) and open it.

    Outside the multipage app (a page run on its own) there is no page to switch to; the hand-off stays in
    the session and a note says where to go.
    """
    import streamlit as st
    from streamlit.errors import StreamlitAPIException

    st.session_state[PREFILL_KEY] = recommendation_prefill(point)
    try:
        st.switch_page(EXPORT_PAGE)
    except StreamlitAPIException:
        st.info("The recommendation is pre-filled on the Export page; open it from the menu.",
                icon=":material/download:")


def apply_prefill(session) -> dict | None:
    """Seed the Export form's widget keys with their defaults, and move a Summary hand-off
    (``session[PREFILL_KEY]``) into them, once.

    Call before the form's widgets are drawn (the widgets then take no default of their own, so Streamlit
    never sees two defaults). Returns the hand-off (for a note on the page) or None.
    """
    for key, value in FORM_DEFAULTS.items():
        if key not in session:
            session[key] = value
    prefill = session.get(PREFILL_KEY)
    if not prefill:
        return None
    del session[PREFILL_KEY]
    for name, key in PREFILL_WIDGETS.items():
        if name in prefill:
            session[key] = prefill[name]
    session["export_source"] = NEW_SETTING
    return prefill


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

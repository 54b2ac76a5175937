"""Export of a structured setting: the smaller Hugging Face folder and the report with its measured savings.

`export_structured(loaded, spec, out_dir)` runs one ratio through `structured.run.run_structured` (pruned,
evaluated, timed when `spec.speed`, saved to out_dir/model and re-evaluated after reloading) and writes the
report (`outputs.report.build_report`; its sections in `structured.report`) whose sizes are measured on the files
written (`pruning_core.sizes`: dense and smaller model as 16-bit safetensors, and the saved folder), and whose
speed sentence and table come from the measurement (or say "not
measured"). `structured_report_data` turns any point of a structured run into the report's document, so the CLI's
--report, the dashboard and this export word it the same.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Union

from pruning_core import claims
from pruning_core.errors import ConfigError
from pruning_core.models import LoadedModel
from pruning_core.outputs.report import build_report
from pruning_core.progress import ProgressFn, no_progress, sub_progress
from pruning_core.provenance import environment
from pruning_core.structured.report import structured_report
from pruning_core.structured.run import StructuredSpec, run_structured

MODEL_FOLDER = "model"


def _method_words(config: dict) -> str:
    compensated = "compensated from calibration data" if config.get("compensate") else "no compensation"
    return f"{', '.join(config.get('units') or [])} removed, {config.get('score')} scores, {compensated}"


def structured_report_data(result: dict, point: dict, files: Optional[list] = None) -> dict:
    """`build_report`'s document (record and sections) of one point of `run_structured`'s result."""
    model = result["model"]
    config = point.get("config") or {}
    saved = point.get("saved") or {}
    gains = claims.structured_claims(point.get("sizes"), point.get("speed"))
    return structured_report({
        "setting": {"model": model.get("name"), "source": model.get("source"), "fingerprint": model.get("fingerprint"),
                    "method": _method_words(config), "structure": claims.STRUCTURED,
                    "sparsity": point["ratio"], "measured_sparsity": point["measured_ratio"]},
        "ppl": {"dense": result["dense_ppl"], "pruned": point["ppl"]},
        "sizes": point.get("sizes"),
        "speed_note": gains["speed"],
        # Said beside the measured speed, so a reader sees what zeroing the same share would not have gained.
        "unstructured_note": claims.speed_sentence("unstructured"),
        "structured": {"measured_ratio": point["measured_ratio"], "parameters": point["parameters"],
                       "file_bytes": saved.get("file_bytes"), "file_dtype": model.get("dtype"),
                       "speed": point.get("speed"), "widths": point.get("widths"),
                       "kept_layers": point.get("kept_layers"), "dense_widths": result.get("dense_widths"),
                       "reload": ({"max_relative_gap": saved["max_relative_gap"],
                                   "loadable_with_transformers": saved.get("loadable_with_transformers"),
                                   "load_note": saved.get("load_note")} if saved else None)},
        "generations": point.get("samples") or [],
        "files": files or [],
        "protocol": result.get("protocol") or {},
        "env": environment(),
    })


def export_structured(loaded: Optional[LoadedModel], spec: Union[StructuredSpec, dict], out_dir, *, store=None,
                      progress: Optional[ProgressFn] = None, pdf: bool = False) -> dict:
    """Prune `spec`'s single ratio, save the smaller model to out_dir/model (verified after reloading) and write
    the report beside it. Returns {"folder", "report" {format: path}, "point", "files" [{name, bytes}]}."""
    progress = progress or no_progress
    spec = spec if isinstance(spec, StructuredSpec) else StructuredSpec.from_dict(spec)
    if len(spec.ratios) != 1:
        raise ConfigError(f"An export takes one structured ratio; got {list(spec.ratios)}. Choose one.")
    out = Path(out_dir)
    if (out / MODEL_FOLDER).exists():
        raise ConfigError(f"{out / MODEL_FOLDER} already exists; choose another output folder (nothing is "
                          "overwritten).")
    out.mkdir(parents=True, exist_ok=True)
    result = run_structured(spec, loaded=loaded, store=store, progress=sub_progress(progress, 0.0, 0.95),
                            save_dir=out)
    point = result["points"][0]
    folder = Path(point["saved"]["folder"])
    shutil.move(str(folder), str(out / MODEL_FOLDER))  # run_structured names it by ratio; an export has one
    point["saved"]["folder"] = str(out / MODEL_FOLDER)
    files = [{"name": f"{MODEL_FOLDER}/{p.name}", "bytes": p.stat().st_size}
             for p in sorted((out / MODEL_FOLDER).iterdir()) if p.is_file()]
    paths = build_report(structured_report_data(result, point, files), out, pdf=pdf)
    progress(1.0, "structured export written")
    return {"folder": str(out / MODEL_FOLDER), "report": {k: str(v) for k, v in paths.items()}, "point": point,
            "files": files}

"""A frontier point's files, for download: which point can be written, the point_export job's spec, the files.

The files are written by the core (`pruning_core.quantization.point_files.run_point_export_job`, job kind
"point_export", a worker process like every job) into ``$PRUNESCOPE_HOME/exports/point-<hash of the spec>/``,
whole (a hidden temporary folder, then one rename): a quantized point as its compressed-tensors folder and, where
its scheme is a GGUF block type (4-bit or 8-bit in groups of 32), its GGUF file written from the same integers; the
dense model as its 16-bit safetensors folder and GGUF F16 file (`prunescope quantize --bits 16`). The point is
quantized again from its recorded setting (GPTQ and RTN are deterministic for the same model and calibration), so
the files hold exactly the model the frontier measured. Points of other techniques are exported where they were
made (the Export page for a pruned mask, the Structured page for a smaller model), said in one sentence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from app.services.export import MIME
from app.services.jobs import recent_results
from app.services.settings import protocol_of
from pruning_core.errors import ConfigError
from pruning_core.store import content_hash, home_dir

KIND = "point_export"
#: The download order of a point's files, and what each is called on its button.
FILE_WORDS = {"compressed-tensors": "compressed-tensors folder (zip)", "gguf": "GGUF file",
              "safetensors-16bit": "16-bit safetensors folder (zip)"}


def _prune_text(prune: Optional[Mapping]) -> Optional[str]:
    """'sparsegpt:0.5' or 'sparsegpt:2:4' from a record's joint-pruning dict."""
    if not prune:
        return None
    structure = prune.get("structure") or "unstructured"
    amount = structure if structure != "unstructured" else f"{float(prune['sparsity']):g}"
    return f"{prune.get('method', 'sparsegpt')}:{amount}"


def _job(kind: str, model: str, job_id: Optional[str]) -> Optional[dict]:
    if not job_id:
        return None
    return next((job for job in recent_results(kind, model) if job["id"] == job_id), None)


def point_spec(settings: dict, point: Mapping) -> dict:
    """The `QuantizeSpec` dict that writes `point`'s files (a row of a frontier's "points"); ConfigError with one
    sentence saying where a point that is not a quantized or the dense model is exported instead."""
    from pruning_core.quantization.run import QuantizeSpec

    model = settings["model"]
    family = point.get("family")
    source = point.get("source") or {}
    if family == "dense":
        return QuantizeSpec(model=model, protocol=protocol_of(settings), bits=16,
                            eval_corpora=tuple(settings["eval_corpora"]), verify=False).validate().to_dict()
    if family in ("unstructured", "N:M"):
        raise ConfigError("A pruned point stores its zeros in an ordinary 16-bit file; write its mask and pruned "
                          "model on the Export page.")
    if family in ("structured", "smaller dense"):
        raise ConfigError("A structurally smaller model is written by the Structured page (or `prunescope "
                          "structured --save-model --export gguf`); its folder can then be quantized.")
    quantize_job = _job("quantize", model, source.get("job"))
    if quantize_job is not None:  # the dashboard's Quantize form: its own spec, exactly
        return QuantizeSpec.from_dict(quantize_job["spec"]).validate().to_dict()
    setting = point.get("setting") or {}
    if setting.get("start") not in ("dense", "joint"):
        raise ConfigError("This point was quantized from a structured or pruned folder the frontier job wrote for "
                          "the run and removed; write that folder (Structured page) and quantize it with "
                          "`prunescope quantize --structured DIR --export compressed-tensors,gguf`.")
    frontier_job = _job("frontier", model, source.get("job"))
    spec = (frontier_job or {}).get("spec") or {}
    protocol = spec.get("protocol") or protocol_of(settings).to_dict()
    corpora = tuple(spec.get("eval_corpora") or settings["eval_corpora"])
    return QuantizeSpec.from_dict({
        "model": spec.get("model") or model, "protocol": protocol, "method": setting["method"],
        "bits": int(setting["bits"]), "group_size": setting.get("group_size"),
        "symmetric": bool(setting.get("symmetric", True)), "scale_dtype": setting.get("scale_dtype") or "float16",
        "prune": _prune_text(setting.get("prune")), "eval_corpora": list(corpora),
        # A record without a column order was measured before GPTQ had one: in natural order.
        "actorder": setting.get("actorder") or "none",
        # A record without a calibration dtype was measured before GPTQ's forwards ran in bf16: in fp32.
        "calib_dtype": setting.get("calib_dtype") or "float32",
        "verify": bool(spec.get("verify", True))}).validate().to_dict()


def export_job_spec(point: dict) -> dict:
    """The point_export job spec of a `QuantizeSpec` dict: the point and the folder its files go to."""
    folder = home_dir() / "exports" / f"point-{content_hash({'point': point})[:16]}"
    return {"model": point["model"], "point": point, "out_dir": str(folder)}


def formats_words(point: dict) -> str:
    """'compressed-tensors folder (zip) and GGUF file': what the export of `point` (a QuantizeSpec dict) writes."""
    from pruning_core.quantization.point_files import point_formats
    from pruning_core.quantization.run import QuantizeSpec

    words = [FILE_WORDS[f] for f in point_formats(QuantizeSpec.from_dict(point))]
    return " and ".join(words)


def download_items(job_result: dict) -> list[dict]:
    """The files of a finished point export, ready for download buttons: [{"name", "path", "bytes" (None for a
    folder, zipped when clicked), "mime", "zip", "label"}], quantize.json last. Raises ConfigError when the folder
    is gone (removed since it was written)."""
    folder = Path(job_result["folder"])
    if not folder.is_dir():
        raise ConfigError(f"The files of this export are no longer in {folder}; write them again.")
    items = []
    for fmt, name in (job_result.get("files") or {}).items():
        path = folder / name
        if path.is_dir():
            items.append({"name": f"{name}.zip", "path": str(path), "bytes": None, "mime": MIME[".zip"], "zip": True,
                          "label": FILE_WORDS.get(fmt, fmt)})
        elif path.is_file():
            items.append({"name": name, "path": str(path), "bytes": path.stat().st_size,
                          "mime": "application/octet-stream", "zip": False, "label": FILE_WORDS.get(fmt, fmt)})
    record = folder / "quantize.json"
    if record.is_file():
        items.append({"name": "quantize.json", "path": str(record), "bytes": record.stat().st_size,
                      "mime": MIME[".json"], "zip": False, "label": "quantize.json (sizes, perplexity, checks)"})
    return items


def item_bytes(item: dict) -> bytes:
    """The bytes of one download item (a folder is zipped under its own name, when the button is clicked)."""
    from app.services.export import zip_folder

    path = Path(item["path"])
    return zip_folder(path, root=path.name) if item.get("zip") else path.read_bytes()


def export_job(job_spec: dict) -> Optional[str]:
    """The id of the newest point_export job of exactly `job_spec` (running, done or ended otherwise), or None:
    a page shows that job's progress or files, and offers to write them when there is none."""
    from app.services.jobs import job_status, latest_job, same_job

    job_id = latest_job(KIND, job_spec)
    if not job_id or not same_job(job_status(job_id), job_spec):
        return None
    return job_id

"""A frontier point's files: the quantized (or 16-bit baseline) model written in the formats asked for, in one folder.

`write_point` is what `prunescope quantize` writes into --out (quantize.json beside the files) and what the
dashboard's point export job (`run_point_export_job`, kind "point_export") writes under
$PRUNESCOPE_HOME/exports/<hash of the spec>/, so the CLI and the dashboard hand over the same files:
- compressed-tensors -> model/ (pack-quantized; transformers and vLLM load it);
- gguf -> <model>-<TYPE>.gguf (llama.cpp), from the integers where the scheme is a GGUF block type;
- safetensors-16bit -> model-16bit/ (the 16-bit baseline, `--bits 16`).
The folder is written whole (`outputs.files.folder_written_whole`: a hidden temporary folder, then one rename).
"""

from __future__ import annotations

from pathlib import Path

from pruning_core.errors import ConfigError
from pruning_core.progress import ProgressFn

MODEL_FOLDER = "model"
SIXTEEN_BIT_FOLDER = "model-16bit"
EXPORTS = ("compressed-tensors", "gguf", "safetensors-16bit", "none")
#: What is written when no format is named: the quantized folder, or with bits 16 every 16-bit format.
DEFAULT_EXPORTS = ("compressed-tensors",)
BASELINE_EXPORTS = ("safetensors-16bit", "gguf")


def write_point(spec, loaded, store, progress, out, formats, gguf_type=None) -> tuple[dict, dict]:
    """Quantize (or, with bits 16, take the baseline of) `spec` and write `formats` into the folder `out`:
    (the quantize.json document, {format: file or folder name in `out`, folders ending in '/'}). Shared by the
    CLI and the dashboard's point export (`run_point_export_job`), so both write the same files."""
    from pruning_core.gguf.write import gguf_file_name
    from pruning_core.quantization.baseline import run_baseline
    from pruning_core.quantization.run import run_quantize

    out = Path(out)
    files: dict[str, str] = {}
    if spec.is_baseline:
        kind = "F16" if spec.scale_dtype == "float16" else "BF16"
        if "safetensors-16bit" in formats:
            files["safetensors-16bit"] = SIXTEEN_BIT_FOLDER + "/"
        if "gguf" in formats:
            files["gguf"] = gguf_file_name(loaded.name, kind)
        record = run_baseline(spec, loaded=loaded, store=store, progress=progress,
                              sixteen_dir=out / SIXTEEN_BIT_FOLDER if "safetensors-16bit" in files else None,
                              gguf_file=out / files["gguf"] if "gguf" in files else None,
                              formats=[f for f in formats if f != "none"])
    else:
        gguf_path = None
        if "gguf" in formats:
            from pruning_core.quantization.gguf_file import gguf_plan

            files["gguf"] = gguf_file_name(loaded.name, gguf_plan(spec.scheme(), gguf_type).type)
            gguf_path = out / files["gguf"]
        model_dir = out / MODEL_FOLDER if "compressed-tensors" in formats else None
        if model_dir is not None:
            files["compressed-tensors"] = MODEL_FOLDER + "/"
        # With files to write the point is computed (and stored) afresh; without them a stored point is reused.
        record = run_quantize(spec, loaded=loaded, store=store, progress=progress, out_dir=model_dir,
                              gguf_file=gguf_path, gguf_type=gguf_type)
    document = {**record, "spec": spec.to_dict(), "folder": MODEL_FOLDER if "compressed-tensors" in files else None,
                "files": {fmt: name.rstrip("/") for fmt, name in files.items()}}
    return document, files


def point_formats(spec) -> tuple[str, ...]:
    """The formats a dashboard export of `spec` writes: the 16-bit baseline's, or compressed-tensors and, where
    the scheme is a GGUF block type, GGUF (`gguf_file.exact_type`; a scheme GGUF cannot hold is not re-rounded
    here, the file would not be the point's model)."""
    from pruning_core.quantization.gguf_file import exact_type

    if spec.is_baseline:
        return BASELINE_EXPORTS
    return ("compressed-tensors", "gguf") if exact_type(spec.scheme()) else ("compressed-tensors",)


def run_point_export_job(spec: dict, store, progress: ProgressFn) -> dict:
    """Job entry (`jobs.JOB_KINDS["point_export"]`): spec {"point": a `run.QuantizeSpec` dict, "out_dir"}; writes
    the point's files (`point_formats`) and quantize.json into out_dir, whole. Returns {"folder", "files"
    {format: name}, "record" (quantize.json's document)}."""
    from pruning_core.models import load_model
    from pruning_core.outputs.files import folder_written_whole, write_json
    from pruning_core.progress import sub_progress
    from pruning_core.quantization.run import QuantizeSpec

    point = QuantizeSpec.from_dict(spec["point"]).validate()
    out_dir = spec.get("out_dir")
    if not out_dir:
        raise ConfigError("A point export needs a folder to write (out_dir).")
    formats = point_formats(point)
    loaded = load_model(point.source, progress=sub_progress(progress, 0.0, 0.05))
    with folder_written_whole(out_dir, "The point's export folder") as tmp:
        document, files = write_point(point, loaded, store, sub_progress(progress, 0.05, 1.0), tmp, formats)
        write_json(Path(tmp) / "quantize.json", document)
    return {"folder": str(out_dir), "files": document["files"], "record": document}

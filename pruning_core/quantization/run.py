"""One quantized point: load, quantize, evaluate, write the files, measure their bytes, store the record.

`run_quantize(spec)` is what the CLI (`prunescope quantize`), the job (kind "quantize") and the benchmark call,
so that they agree. It loads the starting model (the dense model, or a structured folder with `structured`,
loaded by the models loader), reads a pruned model's keep masks with `mask` (a PruneScope mask export, checked
against the model: a mask made for another model is refused in one sentence), quantizes through THE layer walk
(`quantization.model.quantize_model`; `prune` adds SparseGPT pruning in the same sweep), evaluates the quantized
model through THE evaluation (`evaluate.evaluate_setting`, perplexity per corpus, the dense values from the
store), writes the compressed-tensors folder (`export.write_compressed_tensors`; in `out_dir` when given, else
in a temporary folder removed after measuring) and the 16-bit folder, and measures both on disk
(`sizes.files.saved_size`). With `verify`, the written folder is decompressed and compared with the in-memory
weights, and reloaded with plain transformers and evaluated again (`export.reload_check`).

The record (`quantized_record`'s shape) is what the frontier reads: the setting, bytes per format from the
files, perplexity per corpus. It is stored under a key of everything that determines it, so a cancelled job
resumes without quantizing again; a point that must write its folder (`out_dir`) is recomputed.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

from pruning_core import evaluate
from pruning_core.errors import ConfigError
from pruning_core.methods import MethodOptions
from pruning_core.models import LoadedModel, load_model
from pruning_core.progress import ProgressFn, no_progress, sub_progress
from pruning_core.protocol import Protocol, calibration_ids
from pruning_core.quantization.model import JointPruning, QuantizeResult, parse_joint_pruning, quantize_model
from pruning_core.quantization.scheme import QuantScheme, parse_group_size
from pruning_core.spec import JobSpec
from pruning_core.walk import check_calib_dtype

POINT_KIND = "quantized_point"
#: `--bits 16`: no quantization, the starting model's 16-bit files in every format (`quantization.baseline`).
BASELINE_BITS = 16


@dataclass
class QuantizeSpec(JobSpec):
    """One quantized point (the job spec of `run_quantize_job`).

    model: the dense model ('embedded', a folder, a .gguf file, a hub id). method / bits / group_size (an int, or
    None for per output channel) / symmetric / scale_dtype: the `QuantScheme`. Exactly one starting point besides
    the dense model may be given: mask (a mask folder written by `prunescope export`), structured (a folder written
    by the structured export; then it is the model), prune ('sparsegpt:0.5' or 'sparsegpt:2:4': pruned in the
    quantizer's sweep). eval_corpora: corpora to evaluate (default: the calibration corpus). blocksize / percdamp:
    GPTQ's columns per lazy-update block and damping (the paper's 128 and 1 %). actorder: GPTQ's column order,
    "static" (llm-compressor's default) or "none" (`scheme.ACTORDERS`; RTN and SparseGPT in the sweep, which
    keeps natural columns, record "none"). calib_dtype: compute dtype of GPTQ's calibration forwards, "bfloat16"
    (autocast; the Hessians stay fp32) or "float32". bf16 by default: on the embedded model (4-bit g64, 64 x 512
    wiki) it took 70 s against 112 s for fp32 on a 2-core AVX512-bf16 CPU, at wiki perplexity 23.06 against
    23.40 (llm-compressor's fp32 GPTQ: 23.19; docs/runs/quantization.json); recorded in the setting.
    verify: decompress the written folder and reload it with plain transformers.
    """

    WHAT = "quantization"

    model: str = "embedded"
    protocol: Protocol = field(default_factory=Protocol)
    method: str = "gptq"
    bits: int = 4
    group_size: Optional[int] = 64
    symmetric: bool = True
    scale_dtype: str = "float16"
    mask: Optional[str] = None
    structured: Optional[str] = None
    prune: Optional[str] = None
    eval_corpora: tuple[str, ...] = ()
    blocksize: int = 128
    percdamp: float = 0.01
    actorder: str = "static"
    calib_dtype: str = "bfloat16"
    verify: bool = True

    def __post_init__(self) -> None:
        self.eval_corpora = (self.eval_corpora,) if isinstance(self.eval_corpora, str) else tuple(self.eval_corpora)
        self.group_size = parse_group_size(self.group_size)

    @property
    def corpora(self) -> tuple[str, ...]:
        return tuple(self.eval_corpora) or (self.protocol.calib,)

    @property
    def source(self) -> str:
        """The model the quantizer starts from: the structured folder when given, else `model`."""
        return str(self.structured) if self.structured else self.model

    @property
    def start(self) -> str:
        """What is quantized: "dense", "mask", "structured" or "joint" (pruned in the same sweep)."""
        return "mask" if self.mask else "structured" if self.structured else "joint" if self.prune else "dense"

    @property
    def is_baseline(self) -> bool:
        """bits 16: the starting model not quantized, written and measured in every 16-bit format."""
        return int(self.bits) == BASELINE_BITS and not isinstance(self.bits, bool)

    def scheme(self) -> QuantScheme:
        # Pruning in the sweep always runs in natural column order (`quantizer.gptq_group`): say so in the setting.
        actorder = "none" if self.prune else self.actorder
        return QuantScheme(self.bits, self.group_size, bool(self.symmetric), self.method, self.scale_dtype,
                           actorder).validate()

    def joint(self) -> Optional[JointPruning]:
        return parse_joint_pruning(self.prune)

    @property
    def calibration_dtype(self) -> Optional[str]:
        """The compute dtype of the calibration forwards that made the point: GPTQ's `calib_dtype`; None for round
        to nearest, which reads no data (so each RTN setting keeps one stored result)."""
        return self.calib_dtype if self.method == "gptq" else None

    def validate(self) -> "QuantizeSpec":
        """Check every setting before any work starts; raises ConfigError naming the problem."""
        self.protocol.validate()
        if self.is_baseline:
            if self.mask or self.prune:
                raise ConfigError("--bits 16 writes the starting model unquantized; a pruned mask is written in 16 "
                                  "bits by `prunescope export --save-model`, and --prune needs a quantizer (bits 2-8).")
            if self.scale_dtype not in ("float16", "bfloat16"):
                raise ConfigError(f"Scale dtype '{self.scale_dtype}' is unknown; use float16 or bfloat16.")
            return self
        scheme = self.scheme()
        joint = self.joint()
        given = [name for name, value in (("--mask", self.mask), ("--structured", self.structured),
                                          ("--prune", self.prune)) if value]
        if len(given) > 1:
            raise ConfigError(f"Give one starting point besides the dense model, not {' and '.join(given)}.")
        if joint is not None and scheme.method != "gptq":
            raise ConfigError("Pruning in the quantizer's sweep (--prune) needs --method gptq.")
        if int(self.blocksize) < 1 or not 0.0 <= float(self.percdamp) < 1.0:
            raise ConfigError("blocksize must be a positive integer and percdamp a fraction in [0, 1).")
        check_calib_dtype(self.calib_dtype)
        return self

    def _flat(self) -> dict:
        d = asdict(self)
        d["eval_corpora"] = list(self.eval_corpora)
        return d


def _mask_identity(mask_dir: Optional[str]) -> Optional[str]:
    """The mask file's sha256 (what determines the masks), or None."""
    if not mask_dir:
        return None
    from pruning_core.mask_files import MASK_FILE, file_sha256

    return file_sha256(Path(mask_dir).expanduser() / MASK_FILE)


#: Bumped whenever the quantizer's arithmetic changes, so that points stored by an earlier one are measured again
#: (2: 16-bit group scales rounded toward zero, so that a group's extreme weight keeps its level; 3: GPTQ sweeps
#: in static activation order by default, scales from the original weights; the scheme holds `actorder`).
QUANTIZER_VERSION = 3


def point_key(loaded: LoadedModel, spec: QuantizeSpec) -> str:
    """The store key of a point: the model's weights, the protocol, the scheme and starting point, the corpora,
    the library versions."""
    from pruning_core.provenance import library_versions
    from pruning_core.store import content_hash

    versions = library_versions()
    return content_hash({"kind": POINT_KIND, "model": loaded.fingerprint, "protocol": spec.protocol.to_dict(),
                         "scheme": spec.scheme().to_dict(), "start": spec.start, "mask": _mask_identity(spec.mask),
                         "prune": asdict(spec.joint()) if spec.joint() else None,
                         "options": {"blocksize": int(spec.blocksize), "percdamp": float(spec.percdamp),
                                     "calib_dtype": spec.calibration_dtype},
                         "corpora": list(spec.corpora), "verify": bool(spec.verify),
                         "quantizer": QUANTIZER_VERSION, "versions": {k: versions[k] for k in ("prunescope", "torch", "transformers")}})


def _read_mask(loaded: LoadedModel, mask_dir: str) -> tuple[dict, dict]:
    from pruning_core.mask_files import check_mask_fits, load_masks, sparsity_warning

    masks, manifest = load_masks(mask_dir)
    check_mask_fits(loaded, masks, manifest)
    return masks, {"folder": str(mask_dir), "warning": sparsity_warning(masks, manifest),
                   "method": (manifest.get("setting") or {}).get("method") if isinstance(manifest.get("setting"), dict)
                   else None}


def quantized_record(spec: QuantizeSpec, loaded: LoadedModel, result: QuantizeResult, evaluation,
                     dense_ppl: dict, sizes: dict, checks: dict, seconds: dict, mask_info: Optional[dict]) -> dict:
    """The record of one quantized point (what the store keeps and the frontier reads):
    {"setting" {"method", "bits", "group_size" (None = per channel), "symmetric", "scale_dtype", "actorder",
    "calib_dtype" (GPTQ's calibration forwards; None for RTN), "start",
    "mask", "prune", "label"}, "model" (`describe()` of the starting model), "protocol", "sparsity" (zeros / elements of
    the quantized linears), "bytes" {format: {"weight_bytes", "total_bytes", "files", "label"}}, "ppl" {corpus},
    "dense_ppl" {corpus}, "change" {corpus: ppl / dense - 1}, "checks" (packed weights, reload), "seconds",
    "note" (the embedded model's Q4_1 origin, beside 4-bit figures)}."""
    scheme = result.scheme
    ppl = evaluation.pruned_ppl
    return {
        "setting": {**scheme.to_dict(), "start": spec.start, "mask": mask_info, "calib_dtype": spec.calibration_dtype,
                    "prune": result.joint.to_dict() if result.joint else None,
                    "label": scheme.label() + _start_words(spec)},
        "model": loaded.describe(), "protocol": evaluation.protocol, "sparsity": result.sparsity,
        "bytes": sizes, "ppl": ppl, "dense_ppl": dense_ppl,
        "change": {c: ppl[c] / dense_ppl[c] - 1.0 for c in ppl if dense_ppl.get(c)},
        "checks": checks, "seconds": seconds, "note": origin_note(loaded, scheme),
        "created": time.time(),
    }


def _start_words(spec: QuantizeSpec) -> str:
    return {"dense": "", "mask": ", on a pruned mask", "structured": ", on a structurally pruned model",
            "joint": f", with {spec.prune} pruning in the same sweep"}[spec.start]


def origin_note(loaded: LoadedModel, scheme: QuantScheme) -> Optional[str]:
    """For the embedded model (weights dequantized from a Q4_1 GGUF: 4 bits, groups of 32, a scale and a minimum),
    the sentence every 4-bit figure needs; None otherwise."""
    from pruning_core.models import EMBEDDED_NAME

    if loaded.name != EMBEDDED_NAME or scheme.bits > 4:
        return None
    return ("The embedded model's weights were themselves 4-bit (Q4_1: groups of 32 with a 16-bit scale and a 16-bit "
            "minimum), so 4-bit figures on it are measured on weights that were already on a 4-bit grid; the "
            "compressed-tensors grid (an integer zero point) is not Q4_1's (a float minimum), so even 4-bit groups "
            "of 32 asymmetric do not give those weights back exactly (benchmarks/quantization.py measures how many).")


def run_quantize(spec: Union[QuantizeSpec, dict], loaded: Optional[LoadedModel] = None, store=None,
                 progress: Optional[ProgressFn] = None, out_dir: Optional[Union[str, Path]] = None,
                 gguf_file: Optional[Union[str, Path]] = None, gguf_type: Optional[str] = None) -> dict:
    """Quantize, evaluate, write and measure one point (see the module docstring); returns `quantized_record`'s
    dict plus "from_store" and "folder" (the written compressed-tensors folder, or None when it was removed).

    loaded: the starting model already in memory (must be `spec.source`'s). out_dir: where the compressed-tensors
    folder is written (kept); None writes it to a temporary folder, measures it and removes it. gguf_file: also
    write the quantized model as this GGUF file (`gguf_file.write_quantized_gguf`: from the integers where the
    scheme maps onto a GGUF block, else refused before any work unless `gguf_type` asks for re-rounding); its bytes
    join "bytes" as "gguf" and its read-back check joins "checks".
    """
    progress = progress or no_progress
    spec = (spec if isinstance(spec, QuantizeSpec) else QuantizeSpec.from_dict(spec)).validate()
    scheme, protocol, corpora = spec.scheme(), spec.protocol, spec.corpora
    if loaded is None:
        loaded = load_model(spec.source, progress=sub_progress(progress, 0.0, 0.05))
    keep, mask_info = (_read_mask(loaded, spec.mask) if spec.mask else (None, None))
    from pruning_core.quantization.model import check_widths

    check_widths(loaded, scheme)  # before the evaluation windows are read or any model is run
    plan = None
    if gguf_file is not None:
        from pruning_core.gguf.architecture import architecture_for
        from pruning_core.quantization.gguf_file import gguf_plan

        plan = gguf_plan(scheme, gguf_type)  # refused here, before any work, when GGUF cannot hold the scheme
        architecture_for(loaded)  # and a family llama.cpp does not run
    key = point_key(loaded, spec) if store is not None else None
    stored = store.get_result(key) if key is not None else None
    if stored is not None and out_dir is None and gguf_file is None:
        progress(1.0, "quantized point (stored result)")
        return {**stored, "from_store": True, "folder": None}
    eval_ids = evaluate.evaluation_windows(loaded, protocol, corpora)
    dense = evaluate.evaluate_setting(loaded, protocol, corpora, None, eval_ids=eval_ids, store=store,
                                      progress=sub_progress(progress, 0.05, 0.15))
    calib = calibration_ids(loaded, protocol) if scheme.method == "gptq" else None
    clock = time.perf_counter()
    result = quantize_model(loaded, calib, scheme, keep=keep, joint=spec.joint(),
                            options=MethodOptions(int(spec.blocksize), float(spec.percdamp)),
                            batch_size=protocol.batch_size, progress=sub_progress(progress, 0.15, 0.6),
                            calib_dtype=spec.calib_dtype)
    quantize_seconds = time.perf_counter() - clock
    evaluation = evaluate.evaluate_setting(loaded, protocol, corpora, result, dense=False, eval_ids=eval_ids,
                                           progress=sub_progress(progress, 0.6, 0.75), label=scheme.label())
    progress(0.75, "writing the compressed-tensors folder")
    from pruning_core.quantization import export

    temporary = None
    if out_dir is None:
        temporary = tempfile.mkdtemp(prefix="prunescope-quantized-")
        folder = Path(temporary) / "model"
    else:
        folder = Path(out_dir)
    try:
        written = export.write_compressed_tensors(loaded, result, folder)
        sizes = export.measured_sizes(loaded, result, folder)
        checks = {"format": written["format"]}
        if spec.verify:
            progress(0.8, "checking the written folder")
            checks["packed_weights"] = export.packed_weights_check(folder, result)
            checks["reload"] = export.reload_check(folder, loaded, protocol, corpora, eval_ids,
                                                   evaluation.pruned_ppl, sub_progress(progress, 0.8, 0.95))
        if plan is not None:
            progress(0.95, f"writing the GGUF file ({plan.type})")
            sizes["gguf"], checks["gguf"] = _write_gguf(loaded, result, Path(gguf_file), plan)
    finally:
        if temporary is not None:
            export.remove_folder(temporary)
    record = quantized_record(spec, loaded, result, evaluation, dense.dense_ppl, sizes, checks,
                              {"quantize": quantize_seconds, "evaluation": evaluation.seconds}, mask_info)
    if store is not None:
        store.put_result(key, POINT_KIND, record)
    progress(1.0, "quantized point done")
    return {**record, "from_store": False, "folder": str(folder) if temporary is None else None}


def _write_gguf(loaded: LoadedModel, result: QuantizeResult, path: Path, plan) -> tuple[dict, dict]:
    """Write the GGUF file and measure it: (its "bytes" entry, its "checks" entry)."""
    from pruning_core.quantization.gguf_file import write_quantized_gguf
    from pruning_core.sizes.files import format_label, saved_size

    written = write_quantized_gguf(loaded, result, path, plan)
    size = {**saved_size(path), "label": format_label("gguf"), "type": written["type"], "exact": written["exact"],
            "re_rounded": written["re_rounded"]}
    return size, {k: written[k] for k in ("type", "words", "tensor_types", "readback", "readback_words")}


def point_summary(record: dict) -> dict:
    """The figures a frontier plots from a quantized point's record: {"label", "start", "method", "bits",
    "group_size", "symmetric", "sparsity", "model" (name), "bytes" {format: bytes of the weight files, measured},
    "ppl" {corpus}, "change" {corpus: ppl / dense - 1}}."""
    setting = record["setting"]
    return {"label": setting["label"], "start": setting["start"], "method": setting["method"], "bits": setting["bits"],
            "group_size": setting["group_size"], "symmetric": setting["symmetric"], "sparsity": record["sparsity"],
            "model": (record.get("model") or {}).get("name"),
            "bytes": {fmt: size["weight_bytes"] for fmt, size in record["bytes"].items()},
            "ppl": dict(record["ppl"]), "change": dict(record.get("change") or {})}


def stored_quantized_points(store) -> list[dict]:
    """Every quantized point in `store` (the records `run_quantize` stored), for the frontier."""
    return store.results_of_kind(POINT_KIND)


def run_quantize_job(spec: dict, store, progress: ProgressFn) -> dict:
    """Job entry (`jobs.JOB_KINDS["quantize"]`): `run_quantize` with its point kept in `store`."""
    record = run_quantize(spec, store=store, progress=progress)
    return {k: v for k, v in record.items() if k != "folder"}

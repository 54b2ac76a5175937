"""Every sentence about gains that a page or a report shows: size, speed, and the sample texts behind them.

One home, so that the What-if page, the Summary page and the report cannot word the same setting differently
(they all call the functions below, and a test compares their outputs).

Size: the bytes of the files a model is saved as, measured on what was written (`pruning_core.sizes`: the dense
model and the result saved with `save_pretrained` as 16-bit safetensors), always with the format and the runtimes
that load it. Since 2026 no serving runtime stores or accelerates sparse weights (compressed-tensors >= 0.15,
vLLM, transformers, torchao dropped them), so a pruned model saved the ordinary way weighs what the dense one
weighs: its zeros are stored. The sparse bitmap and N:M compressed forms are no longer sized (they were formats
nothing loads); one sentence (`NO_SPARSE_FORMATS`) says why zeros buy no bytes. Only removed structure (a
smaller folder) and quantization make the files smaller. Sizes on disk of the model as given (e.g. a GGUF file
with 4-bit weights) and in memory (fp32 as loaded) are other figures: `size_labels` names each one.

Speed: nothing here times anything. Without a measurement the sentence says what to expect and why
(unstructured zeros are still multiplied; serving runtimes no longer run 2:4 kernels); with a benchmark's
tokens/s (`measured`) it states the measured ratio and where it was measured.

Generation: greedy decoding of the same prompt by the dense and the pruned model, masks applied in
`pruning_core.masks.applied_masks` (weights restored on exit, so a cached model is never left pruned).
"""

from __future__ import annotations

import functools
import json
import math
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from pruning_core.errors import ConfigError
from pruning_core.masks import applied_masks, parse_structure
from pruning_core.sizes.files import FORMATS, format_label
from pruning_core.sizes.records import STRUCTURED, measured_rows, sizes_from_record
from pruning_core.sizes.records import measured as measured_file
from pruning_core.units import format_bytes  # noqa: F401 - the one byte format; claims.format_bytes stays its name here

DEFAULT_PROMPT = "The most important thing to know about the history of science is"

# ----------------------------------------------------------------------------------------------------- sizes

#: Why zeros buy no bytes: the one sentence that labels the sparse storage forms (a bitmap of kept weights, N:M
#: compressed) that PruneScope no longer sizes, because no serving runtime loads them.
NO_SPARSE_FORMATS = ("No serving runtime loads sparse weights any more (compressed-tensors dropped its bitmap "
                     "and 2:4 formats in 0.15, vLLM rejects sparse checkpoints), so zeros buy no bytes: only "
                     "removed structure and quantization make the files smaller.")


#: Why a stored result has no measured files.
OLD_RECORD = "this result was stored before PruneScope measured sizes on the files written"


def file_format(record: Mapping[str, Any]) -> str:
    """'16-bit safetensors (loaded by transformers, vLLM)': a measurement's format with the runtimes that load
    it (the record's own `runtimes` where they differ, e.g. a structured folder only PruneScope's loader reads)."""
    if not record.get("runtimes"):
        return format_label(record["format"])
    label, _ = FORMATS[record["format"]]
    return f"{label} (loaded by {', '.join(record['runtimes'])}: {record.get('runtime_note', 'see its notes')})"


def _ratio_words(dense: int, other: int) -> str:
    ratio = dense / other if other > 0 else 0.0
    if ratio >= 1.0:
        return f"{ratio:.2f}x smaller"
    return f"{1 / ratio:.2f}x larger" if ratio > 0 else "size unknown"


def _against_dense(record: Mapping[str, Any], dense: Optional[Mapping[str, Any]]) -> str:
    """', the same as the dense model' (equal bytes in the same format) or ', against 269.1 MB for the dense model
    (1.25x smaller)' (the dense model's format named when it differs, e.g. a quantized folder against 16-bit);
    '' when the dense model was not measured."""
    if not dense:
        return ""
    same_format = dense.get("format") == record.get("format")
    if same_format and record["weight_bytes"] == dense["weight_bytes"]:
        return ", the same as the dense model"
    label = "" if same_format else f" as {FORMATS[dense['format']][0]}"
    return (f", against {format_bytes(dense['weight_bytes'])} for the dense model{label} "
            f"({_ratio_words(dense['weight_bytes'], record['weight_bytes'])})")


def _result_name(record: Mapping[str, Any], sizes: Mapping[str, Any]) -> str:
    if record.get("what") == STRUCTURED:
        count = sizes.get("structured_parameters")
        return "the structurally pruned model" + (f" ({count:,} parameters)" if count is not None else "")
    return f"the {record.get('what', 'saved')} model"


def size_rows(sizes: Optional[Mapping[str, Any]]) -> list[dict]:
    """The measured files to show side by side, dense first: [{"what", "label" (which model), "format" (`file_format`),
    "bytes" (the weight files' bytes on disk), "total_bytes" (config included), "files"}]."""
    rows = []
    for record in measured_rows(sizes):
        what = record.get("what", "")
        label = {"dense": "Dense model", "pruned": "Pruned model (zeros stored)",
                 STRUCTURED: "Structurally pruned model"}.get(what, f"{what.capitalize()} model")
        rows.append({"what": what, "label": label, "format": file_format(record), "bytes": record["weight_bytes"],
                     "total_bytes": record.get("total_bytes"), "files": record.get("files") or []})
    return rows


def size_sentence(sizes: Mapping[str, Any]) -> str:
    """THE size claim in words, for pages and reports alike: the bytes of the files each model is saved as, with
    the format and the runtimes that load it (see `pruning_core.sizes`); never a formula."""
    structure = str(sizes.get("structure") or "unstructured")
    dense = measured_file(sizes, "dense")
    results = [r for r in measured_rows(sizes) if r.get("what") != "dense"]
    # Zeros to speak of: a mask pruned something (a quantized dense model has none, a structured one removed them).
    zeros = structure != STRUCTURED and sizes.get("kept_weights", 0) < sizes.get("prunable_weights", 0)
    stored = ": sparse zeros are stored." if zeros else "."
    sentences = []
    for record in results:
        sentences.append(f"As {file_format(record)} {_result_name(record, sizes)} weighs "
                         f"{format_bytes(record['weight_bytes'])}{_against_dense(record, dense)}{stored}")
    structured = structure == STRUCTURED
    if not results and dense:  # a stored point without masks: a pruned model saved as usual weighs what dense does
        if structured:
            sentences.append(f"As {file_format(dense)} the dense model weighs {format_bytes(dense['weight_bytes'])};"
                             f" the structurally pruned model was not measured ({OLD_RECORD}).")
        else:
            sentences.append(f"As {file_format(dense)} a model pruned with this setting weighs "
                             f"{format_bytes(dense['weight_bytes'])}, the same as the dense model (measured on the "
                             f"dense model's saved files){stored}")
    if not results and not dense:
        if structured:
            count = sizes.get("structured_parameters")
            sentences.append("The structurally pruned model" + (f" has {count:,} parameters; its files"
                                                                 if count is not None else "'s files")
                             + f" were not measured ({OLD_RECORD}).")
        else:
            sentences.append("Saved as 16-bit safetensors (loaded by transformers, vLLM) the pruned model weighs as "
                             "much as the dense model" + (", since sparse zeros are stored" if zeros else "")
                             + f"; its files were not measured ({OLD_RECORD}).")
    if zeros:
        sentences.append(NO_SPARSE_FORMATS)
    return " ".join(sentences)


# ----------------------------------------------------------------------------------------------------- speed


#: What serving runtimes do with 2:4 today, said beside every 2:4 speed figure.
TWO_FOUR_SERVING = ("vLLM removed its 2:4 sparse kernels (and rejects a sparse checkpoint), so a 2:4 model served "
                    "there runs at dense speed.")

#: Above this share of the cores kept busy by other processes, a measured speed is said to be approximate.
BUSY_SHARE = 0.10


def _measured_sentence(measured: Mapping[str, Any]) -> str:
    """'Measured on cpu: decode at batch 1 20.1 -> 25.3 tokens/s (1.26x), dense -> pruned, one run.'"""
    phases = []
    for phase, numbers in measured.items():
        if phase in ("device", "others_busy_share"):
            continue
        if not isinstance(numbers, Mapping):
            raise ConfigError(f"Measured speed '{phase}' must be {{'dense_tokens_per_s', 'pruned_tokens_per_s'}}.")
        try:
            dense, pruned = float(numbers["dense_tokens_per_s"]), float(numbers["pruned_tokens_per_s"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"Measured speed '{phase}' needs numbers 'dense_tokens_per_s' and "
                              "'pruned_tokens_per_s' from a benchmark run.") from None
        if not (dense > 0 and pruned > 0 and math.isfinite(dense) and math.isfinite(pruned)):
            raise ConfigError(f"Measured speed '{phase}' has a non-positive tokens/s; re-run the benchmark.")
        phases.append(f"{phase} {dense:,.1f} -> {pruned:,.1f} tokens/s ({pruned / dense:.2f}x)")
    if not phases:
        raise ConfigError("The measured speed has no phase (e.g. 'prefill', 'decode'); pass the benchmark's numbers.")
    where = measured.get("device") or "this machine"
    sentence = f"Measured on {where}, dense -> pruned in one run: {'; '.join(phases)}."
    busy = measured.get("others_busy_share")
    if busy is not None and busy > BUSY_SHARE:
        sentence += (f" Other processes kept {busy:.0%} of the cores busy during the timing, so read these "
                     "ratios as approximate and measure again on a quiet machine.")
    return sentence


def speed_sentence(structure: str, measured: Optional[Mapping[str, Any]] = None) -> str:
    """THE speed claim in words for a structure; `measured` (a benchmark's tokens/s) states a real ratio.

    measured: {"device": str, <phase>: {"dense_tokens_per_s": float, "pruned_tokens_per_s": float}, ...} with
    phases such as "prefill at 2048 tokens" or "decode at batch 1" (DESIGN: a speed-up is a measured ratio).
    """
    if measured:
        sentence = _measured_sentence(measured)
        if structure == "2:4":  # measured in PyTorch's kernels; a serving runtime would not run them
            sentence += " " + TWO_FOUR_SERVING
        return sentence
    if structure == STRUCTURED:
        return ("Structured pruning makes the matrices smaller, so ordinary dense kernels do less work; how much "
                "faster it runs is only known once measured (not measured here).")
    shape = parse_structure(structure)
    if not shape.is_nm:
        return ("No speed-up to expect: unstructured zeros are still multiplied by the dense kernels of CPUs and "
                "GPUs, and no serving runtime skips them.")
    if str(shape) == "2:4":
        return (f"No speed-up to expect where models are served: {TWO_FOUR_SERVING} Only PyTorch's semi-structured "
                "sparse tensors still multiply 2:4 matrices faster, on NVIDIA GPUs with sparse tensor cores "
                "(Ampere or newer); not measured here, and on a CPU 2:4 is not faster.")
    return (f"{shape} sparsity has no common fast kernels: expect no speed-up without specialised kernels "
            "(not measured here).")


def speed_short(structure: str, measured: Optional[Mapping[str, Any]] = None) -> str:
    """`speed_sentence` in a few words, for a table cell beside size and quality: the measured ratios
    ("prefill 1.15x, decode 0.98x (measured)") or what to expect without a measurement."""
    if measured:
        phases = [f"{phase} {float(n['pruned_tokens_per_s']) / float(n['dense_tokens_per_s']):.2f}x"
                  for phase, n in measured.items() if isinstance(n, Mapping)]
        busy = measured.get("others_busy_share")
        busy_words = "; machine busy, approximate" if busy is not None and busy > BUSY_SHARE else ""
        return ", ".join(phases) + f" (measured{busy_words})"
    if structure == STRUCTURED:
        return "smaller matrices; not measured"
    shape = parse_structure(structure)
    if not shape.is_nm:
        return "no speed-up (zeros are still multiplied)"
    if str(shape) == "2:4":
        return "none on a CPU; sparse tensor cores only (not measured)"
    return "no speed-up without special kernels"


def measured_from_speed(speed: Optional[Mapping[str, Any]], dtype: str = "float32") -> Optional[dict]:
    """The `measured` argument of `speed_sentence` from a structured speed measurement
    (`pruning_core.structured.speed.measure_speed`'s dict) in one dtype; None when it holds no such dtype.

    {"device": "<machine>, float32 weights", <phase label>: {"dense_tokens_per_s", "pruned_tokens_per_s"}, ...}
    """
    if not speed or dtype not in (speed.get("phases") or {}):
        return None
    where = speed.get("machine_text") or (speed.get("machine") or {}).get("cpu") or "this machine"
    measured: dict = {"device": f"{where}, {dtype} weights"}
    if speed.get("others_busy_share") is not None:
        measured["others_busy_share"] = float(speed["others_busy_share"])
    for phase, numbers in speed["phases"][dtype].items():
        measured[phase] = {"dense_tokens_per_s": numbers["dense_tokens_per_s"],
                           "pruned_tokens_per_s": numbers["pruned_tokens_per_s"]}
    return measured


def structured_claims(sizes: Optional[Mapping[str, Any]], speed: Optional[Mapping[str, Any]],
                      dtype: str = "float32") -> dict:
    """`setting_claims` for a structurally pruned model: sizes measured on its saved files, speed from the
    measurement (`measured_from_speed`), or the "not measured here" sentence when there is none."""
    return setting_claims(sizes, STRUCTURED, measured_from_speed(speed, dtype))


def setting_claims(sizes: Optional[Mapping[str, Any]], structure: str,
                   measured: Optional[Mapping[str, Any]] = None,
                   dense_measured: Optional[Mapping[str, Any]] = None) -> dict:
    """{"size": sentence or None, "speed": sentence}: what every page and report says about one setting.

    sizes: any stored sizes record, old ones included (`sizes.records.sizes_from_record`; `dense_measured`, the
    dense model's measurement the store holds, stands in for the files an old record never measured)."""
    fresh = sizes_from_record(sizes, structure, dense_measured)
    return {"size": size_sentence(fresh) if fresh else None, "speed": speed_sentence(structure, measured)}


# ------------------------------------------------------------------------------------- disk and memory labels


# GGUF value types (gguf spec): fixed-size scalars by struct format; 8 = string, 9 = array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def _gguf_file_type(path: Path) -> Optional[int]:
    """`general.file_type` from a GGUF header (read with struct: the gguf package's reader maps every tensor
    and takes seconds), or None when absent or unreadable."""
    with open(path, "rb") as f:
        def read(fmt: str):
            size = struct.calcsize("<" + fmt)
            data = f.read(size)
            if len(data) != size:
                raise EOFError
            return struct.unpack("<" + fmt, data)[0]

        def skip(kind: int) -> None:
            if kind in _GGUF_SCALARS:
                f.seek(struct.calcsize("<" + _GGUF_SCALARS[kind]), 1)
            elif kind == 8:
                f.seek(read("Q"), 1)
            elif kind == 9:
                inner, count = read("I"), read("Q")
                for _ in range(count):
                    skip(inner)
            else:
                raise ValueError(kind)

        if f.read(4) != b"GGUF" or read("I") < 2:
            return None
        read("Q")  # tensor count
        for _ in range(read("Q")):
            key = f.read(read("Q")).decode("utf-8", "replace")
            kind = read("I")
            if key == "general.file_type" and kind in _GGUF_SCALARS:
                return int(read(_GGUF_SCALARS[kind]))
            skip(kind)
    return None


@functools.lru_cache(maxsize=16)
def _disk_form_cached(path: str, size: int, mtime_ns: int) -> str:  # noqa: ARG001 - size/mtime key the cache
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".gguf":
        try:
            code = _gguf_file_type(p)
        except (OSError, EOFError, ValueError, UnicodeDecodeError):
            code = None
        if code is None:
            return "GGUF"
        try:
            from gguf import LlamaFileType  # installed with transformers' GGUF support

            name = LlamaFileType(code).name
            for prefix in ("MOSTLY_", "ALL_"):
                name = name.removeprefix(prefix)
        except (ImportError, ValueError):
            name = f"file type {code}"
        return f"GGUF {name}"
    if p.is_dir():
        fmt = "safetensors" if any(p.glob("*.safetensors")) else "PyTorch .bin" if any(p.glob("*.bin")) else "files"
        try:
            dtype = json.loads((p / "config.json").read_text(encoding="utf-8")).get("torch_dtype")
        except (OSError, ValueError):
            dtype = None
        return f"{fmt}, {dtype}" if dtype else fmt
    return "file"


def disk_form(path) -> str:
    """What a model on disk is stored as: 'GGUF Q4_1', 'safetensors, bfloat16', ... (cached per file state)."""
    p = Path(path)
    try:
        stat = p.stat()
    except OSError:
        return "unknown format"
    return _disk_form_cached(str(p.resolve()), stat.st_size, stat.st_mtime_ns)


def size_labels(parameters: int, memory_bytes: Optional[int] = None, memory_dtype: Optional[str] = None,
                disk_bytes: Optional[int] = None, disk_format: Optional[str] = None,
                sixteen_bit: Optional[Mapping[str, Any]] = None) -> dict:
    """Each size figure of a model with what it is: {"disk", "memory", "value_16bit"} (None where unknown).

    E.g. "98.4 MB on disk (GGUF Q4_1)", "538.1 MB in memory (float32, as loaded for pruning)", "269.1 MB as
    16-bit safetensors (loaded by transformers, vLLM), measured on the saved files" (`sixteen_bit`: the dense
    model's measurement, `sizes.measure.sixteen_bit_size`; the size the What-if page and the report compare with).
    parameters: the model's parameter count (kept for callers; no size is derived from it).
    """
    del parameters  # a size is measured on files, never parameters x bytes
    return {
        "disk": None if disk_bytes is None else
        f"{format_bytes(disk_bytes)} on disk" + (f" ({disk_format})" if disk_format else ""),
        "memory": None if memory_bytes is None else
        f"{format_bytes(memory_bytes)} in memory" + (f" ({memory_dtype}, as loaded for pruning)" if memory_dtype
                                                      else ""),
        "value_16bit": None if not sixteen_bit else
        f"{format_bytes(sixteen_bit['weight_bytes'])} as {file_format(sixteen_bit)}, measured on the saved files",
    }


# ------------------------------------------------------------------------------------------------ generation


@torch.inference_mode()
def _greedy(loaded, prompt: str, max_new_tokens: int) -> str:
    tokenizer = loaded.tokenizer
    # The tokenizer's own default for special tokens (a BOS where the model expects one), as the model is
    # prompted everywhere else; every caller tokenises through here, so dense, pruned, page and report agree.
    encoded = tokenizer(prompt, return_tensors="pt")
    input_ids = encoded["input_ids"]  # (1, T)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    output = loaded.model.generate(
        input_ids, attention_mask=encoded.get("attention_mask"), max_new_tokens=int(max_new_tokens),
        do_sample=False, num_beams=1, pad_token_id=pad, use_cache=True,
    )
    return tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True)


def generate_text(loaded, prompt: str, max_new_tokens: int = 40,
                  masks: Optional[Mapping[str, torch.Tensor]] = None,
                  weights: Optional[Mapping[str, torch.Tensor]] = None) -> str:
    """Greedy continuation of `prompt` (the new text only), with `masks`/`weights` applied if given.

    Deterministic (greedy, no sampling). Masks are applied in `applied_masks`, which restores the weights on
    exit. An empty prompt is refused with a message; max_new_tokens=0 gives "" without running the model.
    """
    if not str(prompt).strip():
        raise ConfigError("The prompt is empty; type a few words for the models to continue.")
    if int(max_new_tokens) < 0:
        raise ConfigError(f"max_new_tokens is {max_new_tokens}; give 0 (no text) or more new tokens.")
    if int(max_new_tokens) == 0:
        return ""
    if not masks:
        return _greedy(loaded, prompt, max_new_tokens)
    with applied_masks(loaded.model, masks, weights):
        return _greedy(loaded, prompt, max_new_tokens)


def compare_models(dense, pruned, prompts: Sequence[str], max_new_tokens: int = 40) -> list[dict]:
    """[{"prompt", "dense", "pruned"}]: greedy text of two models (e.g. a dense model and its structurally
    pruned copy, which has its own smaller tensors), tokenised and decoded as `generate_text` does."""
    return [{"prompt": p, "dense": generate_text(dense, p, max_new_tokens),
             "pruned": generate_text(pruned, p, max_new_tokens)} for p in prompts]


def compare_generations(loaded, prompts: Sequence[str], masks: Optional[Mapping[str, torch.Tensor]],
                        weights: Optional[Mapping[str, torch.Tensor]] = None,
                        max_new_tokens: int = 40) -> list[dict]:
    """[{"prompt", "dense", "pruned"}]: greedy text of the dense model and of the masked one, per prompt.

    The masks are applied once for all prompts ("pruned" is absent when `masks` is None).
    """
    rows = [{"prompt": p, "dense": generate_text(loaded, p, max_new_tokens)} for p in prompts]
    if masks:
        with applied_masks(loaded.model, masks, weights):
            for row in rows:
                row["pruned"] = generate_text(loaded, row["prompt"], max_new_tokens)
    return rows

"""Every sentence about gains that a page or a report shows: size, speed, and the sample texts behind them.

One home, so that the What-if page, the Summary page and the report cannot word the same setting differently
(they all call the functions below, and a test compares their outputs).

Size (bytes, from the real counts of kept weights, 16-bit stored values as models are shipped):
  * dense: every parameter takes 16 bits; zeros too, so an ordinarily saved pruned checkpoint is no smaller;
  * sparse bitmap: 1 bit per prunable weight saying kept/pruned, plus the kept values (any mask);
  * N:M compressed (2:4 is NVIDIA's format): the n kept values of every group of m, each with a
    ceil(log2 m)-bit position (2 bits for 2:4), i.e. 2*16 + 2*2 = 36 bits per 4 weights instead of 64;
  * structured: a structurally pruned model's real parameter count, 16 bits each (any ordinary format).
  Embeddings, norms and the LM head are not pruned and stay dense in every form. A partial byte counts as a
  byte. Sizes on disk (e.g. a GGUF file with 4-bit quantised weights) and in memory (fp32 as loaded) are
  other figures: `size_labels` names each one, so that "98.4 MB" and "269.0 MB" are never read as the same.

Speed: nothing here times anything. Without a measurement the sentence says what to expect and why
(unstructured zeros are still multiplied; 2:4 needs sparse tensor cores and a runtime that uses them); with
a benchmark's tokens/s (`measured`) it states the measured ratio and where it was measured.

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
from pruning_core.units import format_bytes  # noqa: F401 - the one byte format; claims.format_bytes stays its name here

VALUE_BITS = 16  # bits per stored weight value (fp16 / bf16: how models are shipped)
BITMAP_BITS = 1  # bits per prunable weight in the sparse bitmap form
STRUCTURED = "structured"  # the structure name of a structurally pruned (sliced) model

DEFAULT_PROMPT = "The most important thing to know about the history of science is"

# ----------------------------------------------------------------------------------------------------- sizes


def _bytes(bits: int) -> int:
    return (int(bits) + 7) // 8  # a partial byte still takes a byte


def sizes_from_counts(parameters: int, prunable: int, kept: int, structure: str,
                      structured_parameters: Optional[int] = None) -> dict:
    """Model size in bytes in each storage form, from real counts (16-bit values); THE size computation.

    parameters: all parameters of the dense model (tied weights once); prunable: weights of the prunable
    linears; kept: non-zero (kept) weights among them; structure: "unstructured", "N:M" or "structured";
    structured_parameters: the parameter count of a structurally pruned model (its real, smaller size).
    Returns {"value_bits", "structure", "parameters", "prunable_weights", "kept_weights", "other_parameters",
    "dense_bytes", "bitmap_bytes", "nm_bytes" (None unless N:M), "nm_index_bits" (None unless N:M),
    "structured_parameters", "structured_bytes" (None unless given)}.
    """
    parameters, prunable, kept = int(parameters), int(prunable), int(kept)
    if not 0 <= kept <= prunable <= parameters:
        raise ConfigError(f"Size counts do not fit together (kept {kept}, prunable {prunable}, parameters "
                          f"{parameters}); they must satisfy 0 <= kept <= prunable <= parameters.")
    other = parameters - prunable  # embeddings, norms, LM head: stored dense in every form
    nm_bytes = nm_index_bits = None
    if structure != STRUCTURED and parse_structure(structure).is_nm:
        shape = parse_structure(structure)
        nm_index_bits = max(1, math.ceil(math.log2(shape.m)))
        # The format always stores n slots per group of m (a zero value if a group kept fewer).
        slots = prunable * shape.n // shape.m
        nm_bytes = _bytes(other * VALUE_BITS + slots * (VALUE_BITS + nm_index_bits))
    structured_bytes = None
    if structured_parameters is not None:
        structured_bytes = _bytes(int(structured_parameters) * VALUE_BITS)
    return {
        "value_bits": VALUE_BITS,
        "structure": structure,
        "parameters": parameters,
        "prunable_weights": prunable,
        "kept_weights": kept,
        "other_parameters": other,
        "dense_bytes": _bytes(parameters * VALUE_BITS),
        "bitmap_bytes": _bytes(other * VALUE_BITS + prunable * BITMAP_BITS + kept * VALUE_BITS),
        "nm_bytes": nm_bytes,
        "nm_index_bits": nm_index_bits,
        "structured_parameters": None if structured_parameters is None else int(structured_parameters),
        "structured_bytes": structured_bytes,
    }


def sizes_from_masks(loaded, masks: Mapping[str, torch.Tensor], structure: str) -> dict:
    """`sizes_from_counts` for a loaded model and its keep-masks (True = kept); unmasked prunable weights
    count as kept."""
    facts = loaded.describe()
    prunable = int(facts["prunable_parameters"])
    masked = sum(int(m.numel()) for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values()) + max(0, prunable - masked)
    return sizes_from_counts(facts["parameters"], prunable, kept, structure)


def sizes_for_point(model_facts: Mapping[str, Any], point: Mapping[str, Any]) -> Optional[dict]:
    """`sizes_from_counts` for a stored sweep point (no masks kept): kept = prunable x (1 - measured sparsity).

    The measured sparsity is zeros / elements of the real masks, so rounding gives back their exact count.
    model_facts: `LoadedModel.describe()` of the sweep's model. None when the facts lack the counts.
    """
    if not model_facts or "parameters" not in model_facts or "prunable_parameters" not in model_facts:
        return None
    prunable = int(model_facts["prunable_parameters"])
    kept = int(round(prunable * (1.0 - float(point["sparsity"]))))
    return sizes_from_counts(model_facts["parameters"], prunable, kept, str(point.get("structure", "unstructured")))


def sizes_from_record(record: Optional[Mapping[str, Any]], structure: str) -> Optional[dict]:
    """`sizes_from_counts` again from the counts in a stored sizes dict, or None when it holds none.

    Results and reports stored earlier keep their counts under older names (the what-if's "size":
    prunable_weights/kept_weights/other_parameters; the report's "sizes": parameters/pruned_linear_weights/
    kept_weights); recomputing from the counts makes every stored result read in today's words.
    """
    if not record:
        return None
    kept = record.get("kept_weights")
    if kept is None:
        return None
    if "prunable_weights" in record and "other_parameters" in record:
        prunable = int(record["prunable_weights"])
        parameters = prunable + int(record["other_parameters"])
    elif "parameters" in record and "pruned_linear_weights" in record:
        parameters, prunable = int(record["parameters"]), int(record["pruned_linear_weights"])
    else:
        return None
    return sizes_from_counts(parameters, prunable, int(kept), str(record.get("structure") or structure),
                             record.get("structured_parameters"))


def _ratio_words(dense: int, other: int) -> str:
    if other <= 0:
        return "size unknown"
    ratio = dense / other
    if ratio >= 1.0:
        return f"{ratio:.2f}x smaller"
    return f"{1 / ratio:.2f}x larger: too few weights are removed for this form to pay off"


def size_forms(sizes: Mapping[str, Any]) -> list[dict]:
    """The storage forms to show side by side: [{"label", "bytes" (None = not applicable), "note"}]."""
    structure = sizes["structure"]
    nm = sizes.get("nm_bytes")
    forms = [{"label": "Dense (zeros stored)", "bytes": sizes["dense_bytes"],
              "note": "Zeros take as much space as any weight: no saving."}]
    if nm is not None:
        shape = parse_structure(structure)
        forms.append({"label": f"{structure} compressed", "bytes": nm,
                      "note": f"{shape.n} values of every {shape.m} plus a {sizes['nm_index_bits']}-bit position "
                              "each" + (" (NVIDIA's sparse format)." if structure == "2:4" else ".")})
    elif sizes.get("structured_bytes") is None:
        forms.append({"label": "2:4 compressed", "bytes": None,
                      "note": "Needs a 2:4 mask: choose the 2:4 structure to use this form."})
    if sizes.get("structured_bytes") is not None:
        forms.append({"label": "Structured (smaller matrices)", "bytes": sizes["structured_bytes"],
                      "note": f"{sizes['structured_parameters']:,} parameters left; any ordinary format."})
    else:
        forms.append({"label": "Bitmap + kept values", "bytes": sizes["bitmap_bytes"],
                      "note": "1 bit per weight says kept or pruned; only kept values are stored."})
    return forms


def size_sentence(sizes: Mapping[str, Any]) -> str:
    """THE size claim in words, for pages and reports alike (16-bit values; see the module docstring)."""
    dense = sizes["dense_bytes"]
    lead = f"As {sizes['value_bits']}-bit weights the dense model takes {format_bytes(dense)}"
    if sizes.get("structured_bytes") is not None:
        return (f"{lead}; the structurally pruned model has {sizes['structured_parameters']:,} parameters and "
                f"takes {format_bytes(sizes['structured_bytes'])} "
                f"({_ratio_words(dense, sizes['structured_bytes'])}) in any ordinary format.")
    if sizes.get("nm_bytes") is not None:
        shape = parse_structure(sizes["structure"])
        form = (f"in the {sizes['structure']} compressed form (the {shape.n} kept values of every {shape.m} plus a "
                f"{sizes['nm_index_bits']}-bit position each) the pruned model takes {format_bytes(sizes['nm_bytes'])} "
                f"({_ratio_words(dense, sizes['nm_bytes'])})")
    else:
        form = (f"stored as a sparse bitmap (1 bit per weight plus the kept values) the pruned model takes "
                f"{format_bytes(sizes['bitmap_bytes'])} ({_ratio_words(dense, sizes['bitmap_bytes'])})")
    return (f"{lead}; {form}. Embeddings, norms and the LM head stay dense, and a checkpoint saved the ordinary "
            "way stores the zeros, so it is as large as the dense model.")


# ----------------------------------------------------------------------------------------------------- speed


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
        return _measured_sentence(measured)
    if structure == STRUCTURED:
        return ("Structured pruning makes the matrices smaller, so ordinary dense kernels do less work; how much "
                "faster it runs is only known once measured (not measured here).")
    shape = parse_structure(structure)
    if not shape.is_nm:
        return ("No speed-up to expect: unstructured zeros are still multiplied by the dense kernels of CPUs and "
                "GPUs; only a compressed storage form is smaller.")
    if str(shape) == "2:4":
        return ("2:4 sparsity can speed up the matrix multiplications only on NVIDIA GPUs with sparse tensor "
                "cores (Ampere or newer) and a runtime that uses them (e.g. PyTorch semi-structured sparse "
                "tensors, TensorRT, vLLM with cuSPARSELt), typically well under 2x end to end; not measured "
                "here, and on a CPU it is not faster.")
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
    """`setting_claims` for a structurally pruned model: sizes from its real parameter count, speed from the
    measurement (`measured_from_speed`), or the "not measured here" sentence when there is none."""
    return setting_claims(sizes, STRUCTURED, measured_from_speed(speed, dtype))


def setting_claims(sizes: Optional[Mapping[str, Any]], structure: str,
                   measured: Optional[Mapping[str, Any]] = None) -> dict:
    """{"size": sentence or None, "speed": sentence}: what every page and report says about one setting."""
    return {"size": size_sentence(sizes) if sizes else None, "speed": speed_sentence(structure, measured)}


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
                disk_bytes: Optional[int] = None, disk_format: Optional[str] = None) -> dict:
    """Each size figure of a model with what it is: {"disk", "memory", "value_16bit"} (None where unknown).

    E.g. "98.4 MB on disk (GGUF Q4_1)", "538.1 MB in memory (float32, as loaded for pruning)",
    "269.0 MB as 16-bit weights" (the dense size the What-if page and the report compare against).
    """
    return {
        "disk": None if disk_bytes is None else
        f"{format_bytes(disk_bytes)} on disk" + (f" ({disk_format})" if disk_format else ""),
        "memory": None if memory_bytes is None else
        f"{format_bytes(memory_bytes)} in memory" + (f" ({memory_dtype}, as loaded for pruning)" if memory_dtype
                                                      else ""),
        "value_16bit": f"{format_bytes(_bytes(int(parameters) * VALUE_BITS))} as {VALUE_BITS}-bit weights",
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

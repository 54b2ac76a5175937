"""Frontier points with their speed measured in a runtime (llama.cpp), read from the store, never a formula.

A point's speed is the stored measurement (`gguf.runtime_speed`) of a GGUF file of it. Wherever the file can be the
point's own model, it is:
- the dense point: the dense model as F16; a structured point or a smaller dense model: its own model as F16
  (`measure_and_link`, where the frontier run has the model in hand);
- a quantized point whose scheme is a GGUF block (`own_gguf_type`: symmetric 4-bit groups of 32 = Q4_0, asymmetric
  = Q4_1, symmetric 8-bit = Q8_0, fp16 scales), from the dense model or a structured one: its exact GGUF export,
  written from its quantized integers (`quantization.gguf_file`) while the frontier run computes the point, and
  timed (`time_and_link`); the link says `own_file`.
Only where the point's own file cannot be made (a quantized point another job stored, which this run did not
compute; a 5-bit group-of-32 layout GGUF holds as Q5_0/Q5_1 but PruneScope does not write from integers) is a
quantized point of the dense model timed on a stand-in: the dense model written in that point's GGUF type by
llama.cpp's own rounding (`gguf_type_of`, `measure_point_speeds`): llama.cpp's speed depends on the tensor types and
shapes, not on the values, and the point says which file it was ("measured_on"). Every other point (per-channel or
64-wide groups, which GGUF has no type for; pruned zeros, which llama.cpp computes like any weight) shows
`NOT_MEASURED` until a measurement is linked to it.

`attach_speeds` puts the stored measurements on the points; `speed_cell` and `speed_sentence` are the words the
table, the report and the Summary use.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from pruning_core.errors import ConfigError
from pruning_core.frontier.points import FrontierPoint
from pruning_core.progress import ProgressFn, no_progress, sub_progress

#: Said wherever a point has no stored measurement (never an estimate in its place).
NOT_MEASURED = "not measured in a runtime"
#: Said beside the speed of a quantized point timed on the dense model written in its GGUF type, not on its own file.
STAND_IN = "the dense model in this GGUF type"


def gguf_type_of(point: FrontierPoint) -> Optional[str]:
    """The GGUF tensor type whose file of the dense model has this point's layout, or None (see the module
    docstring): "F16" for the dense point, a block type for a quantized point of the dense model."""
    if point.family == "dense":
        return "F16"
    if point.family != "quantized" or (point.setting.get("start") or "dense") != "dense":
        return None
    from pruning_core.quantization.gguf_file import block_type

    setting = point.setting
    group = setting.get("group_size")
    return block_type(int(setting.get("bits", 0)), int(group) if group else None,
                      bool(setting.get("symmetric", True)))


def own_gguf_type(setting: Mapping[str, Any]) -> Optional[str]:
    """The GGUF type that holds a quantized point's own integers exactly (`quantization.gguf_file.exact_type`) from
    its setting ({"method", "bits", "group_size", "symmetric", "scale_dtype"}), or None."""
    from pruning_core.quantization.gguf_file import exact_type
    from pruning_core.quantization.scheme import QuantScheme

    group = setting.get("group_size")
    scheme = QuantScheme(bits=int(setting.get("bits", 0)), group_size=int(group) if group else None,
                         symmetric=bool(setting.get("symmetric", True)), method=str(setting.get("method", "rtn")),
                         scale_dtype=str(setting.get("scale_dtype", "float16")))
    return exact_type(scheme)


def own_file_words(kind: str, gguf_bytes: Optional[Mapping[str, Any]] = None) -> str:
    """Which file was timed for a quantized point whose own GGUF file was: 'this point's own GGUF file (Q4_0, written
    from its quantized integers; 97,000,000 bytes of weights)'."""
    size = (gguf_bytes or {}).get("weight_bytes")
    return (f"this point's own GGUF file ({kind}, written from its quantized integers"
            + (f"; {int(size):,} bytes of weights)" if size else ")"))


def has_own_file_here(store, model_fingerprint: Optional[str], key: str) -> bool:
    """Whether the store links the point `key` of the dense model `model_fingerprint` to a measurement of its own
    file made on this machine's CPU (then a new run reads it back instead of writing the file again)."""
    from pruning_core.gguf.runtime_speed import cpu_facts

    speed = stored_speeds(store, model_fingerprint).get(key)
    return bool(speed and speed.get("own_file") and speed.get("machine") == cpu_facts()["cpu"])


def attach_speeds(points: Sequence[FrontierPoint], speeds: Mapping[str, Mapping[str, Any]]) -> list[FrontierPoint]:
    """`points` with `speed` set from `speeds` ({point key: `gguf.runtime_speed.speed_fields`}); a point without
    an entry keeps what it had (None: not measured)."""
    return [replace(p, speed=dict(speeds[p.key])) if p.key in speeds else p for p in points]


def stored_speeds(store, model_fingerprint: Optional[str]) -> dict[str, dict]:
    """{point key: speed fields} linked in `store` for the dense model `model_fingerprint` (empty without either)."""
    from pruning_core.gguf.runtime_speed import point_speeds

    return point_speeds(store, model_fingerprint)


def time_and_link(path, keys: Sequence[str], store, dense_fingerprint: str, words: str, own_file: bool,
                  config=None, progress: Optional[ProgressFn] = None) -> dict:
    """Time the GGUF file `path` in llama.cpp (`measure_runtime_speed`, read back from `store` when it measured the
    same file on this machine) and link the frontier points `keys` of the dense model `dense_fingerprint` to the
    measurement, saying `words` (which file it was) and whether it is their `own_file`. Returns the measurement."""
    from pruning_core.gguf.runtime_speed import link_point, measure_runtime_speed

    record = measure_runtime_speed(path, config, store=store, progress=progress or no_progress)
    if store is not None:
        for key in keys:
            link_point(store, dense_fingerprint, key, record, words, own_file=own_file)
    return record


def measure_and_link(model, kind: str, keys: Sequence[str], store, dense_fingerprint: str, words: str,
                     config=None, progress: Optional[ProgressFn] = None, own_file: bool = True) -> dict:
    """Write `model` (a `LoadedModel`: the dense model, a structured or a smaller one) as a GGUF file of type
    `kind` in a temporary folder and time and link it (`time_and_link`); own_file: whether that file is the
    points' own model (False: the dense model standing in for a quantized layout). Returns the measurement."""
    from pruning_core.gguf.write import export_gguf, gguf_file_name

    progress = progress or no_progress
    with tempfile.TemporaryDirectory(prefix="prunescope-runtime-speed-") as work:
        path = Path(work) / gguf_file_name(model.name, kind)
        export_gguf(model, path, kind, progress=sub_progress(progress, 0.0, 0.3))
        return time_and_link(path, keys, store, dense_fingerprint, words, own_file, config,
                             sub_progress(progress, 0.3, 1.0))


def measure_point_speeds(loaded, points: Sequence[FrontierPoint], store, config=None,
                         progress: Optional[ProgressFn] = None) -> list[dict]:
    """Write the dense model `loaded` once per GGUF type the points need (`gguf_type_of`), time each file and link
    every such point to its measurement (`measure_and_link`): the dense point's own file, and the stand-in for the
    quantized points whose own file was not timed (pass only those). Returns [{"point", "type", "speed"
    (`speed_fields`), "from_store"}], or {"point", "type", "skipped" (the one sentence why)} where the model cannot
    be written as GGUF. ConfigError (one sentence) where llama-cpp-python is not installed."""
    from pruning_core.gguf.runtime import require_llama_cpp
    from pruning_core.gguf.runtime_speed import speed_fields

    require_llama_cpp()
    progress = progress or no_progress
    wanted: dict[str, list[FrontierPoint]] = {}
    for point in points:
        kind = gguf_type_of(point)
        if kind is not None:
            wanted.setdefault(kind, []).append(point)
    done = []
    for index, (kind, linked) in enumerate(wanted.items()):
        own = kind == "F16"
        words = (f"the dense model written as {kind}" if own else
                 f"not this point's own file but the dense model written as GGUF {kind} by llama.cpp's rounding: the "
                 "tensor types and shapes of this layout (llama.cpp's speed does not depend on the values)")
        try:
            record = measure_and_link(loaded, kind, [p.key for p in linked], store, loaded.fingerprint, words,
                                      config, sub_progress(progress, index / len(wanted), (index + 1) / len(wanted)),
                                      own_file=own)
        except ConfigError as exc:  # a family llama.cpp does not run: these points stay not measured, saying why
            done += [{"point": p.key, "type": kind, "skipped": str(exc)} for p in linked]
            continue
        done += [{"point": p.key, "type": kind, "speed": speed_fields(record, words, own),
                  "from_store": record["from_store"]} for p in linked]
    return done


def speed_cell(row: Mapping[str, Any]) -> str:
    """'448 / 153 tokens/s' (prefill / decode) of a point row with a measurement, else `NOT_MEASURED`; a quantized
    point timed on a stand-in (`STAND_IN`: not its own file; links made before own files existed were all stand-ins)
    says so in the cell."""
    speed = row.get("speed")
    if not speed:
        return NOT_MEASURED
    cell = f"{speed['prefill_tokens_per_s']:,.0f} / {speed['decode_tokens_per_s']:,.0f} tokens/s"
    if "quantized" in str(row.get("family", "")) and not speed.get("own_file"):
        cell += f" ({STAND_IN})"
    return cell


def measured_by(rows: Sequence[Mapping[str, Any]]) -> Optional[str]:
    """'llama.cpp (llama-cpp-python 0.3.36) on AMD EPYC (2 cores, 2 threads; avx2, ...)': who measured the rows'
    speeds (each distinct runtime and machine once, '; ' between), or None when no row has a speed."""
    seen = dict.fromkeys(f"{s['runtime_words']} on {s['machine_words']}" for s in (r.get("speed") for r in rows) if s)
    return "; ".join(seen) or None


def speed_note(rows: Sequence[Mapping[str, Any]]) -> str:
    """The sentence beside a table of points: how the speeds were measured and by which runtime on which machine,
    or that none was."""
    who = measured_by(rows)
    if who is None:
        return (f"Speed: {NOT_MEASURED} yet for any point; `prunescope frontier --runtime-speed` times each point "
                "GGUF can hold in llama.cpp (where llama-cpp-python is installed).")
    first = next(r["speed"] for r in rows if r.get("speed"))
    return (f"Speed measured in {who}: prefill of {first.get('prefill_tokens')} tokens and batch-1 decode of "
            f"{first.get('decode_tokens')} tokens, tokens/s, median of the repeats after a warm-up, on each point's "
            "own GGUF file, or where it could not be made on the dense model written in the point's GGUF type "
            f"(each point says which file). Points marked '{NOT_MEASURED}' have no GGUF file measured (GGUF has no "
            "type for their layout, or nothing timed them yet).")


def speed_sentence(row: Optional[Mapping[str, Any]], dense: Optional[Mapping[str, Any]] = None) -> str:
    """One sentence on a point's measured speed, with the runtime and the machine, and against the dense model's
    when both were measured on the same machine with the same threads; `NOT_MEASURED` otherwise."""
    speed = (row or {}).get("speed")
    if not speed:
        return f"Speed: {NOT_MEASURED}."
    text = (f"In {speed['runtime_words']} on {speed['machine_words']}: decode {speed['decode_tokens_per_s']:,.0f} "
            f"tokens/s at batch 1, prefill {speed['prefill_tokens_per_s']:,.0f} tokens/s")
    base = (dense or {}).get("speed")
    same = base and (base.get("machine"), base.get("threads")) == (speed.get("machine"), speed.get("threads"))
    if same and dense is not row and base.get("key") != speed.get("key"):
        text += (f" ({speed['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f}x the dense model's decode, "
                 f"{speed['prefill_tokens_per_s'] / base['prefill_tokens_per_s']:.2f}x its prefill)")
    if speed.get("measured_on"):
        text += f"; the file timed: {speed['measured_on']}"
    return text + "."

"""The frontier from what the store already holds: finished frontier, quantize, sweep and structured jobs.

What the dashboard shows without measuring anything: the points of the model's newest finished frontier job,
of its finished quantize jobs (the Frontier page's form), of its sweeps (Curves) and of its structured runs
(Structured page), each turned into a `FrontierPoint` by `points`. Only results of the same evaluation are
mixed: the same calibration, windows, seed and dtype (`PROTOCOL_FIELDS`), so every perplexity on the chart was
measured on the same tokens. A result without measured files (a structured point stored before sizes were
measured on disk) is left out rather than given a formula size. Newer results come first, so a technique
measured twice shows its newest measurement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from pruning_core.frontier.build import frontier_points
from pruning_core.frontier.points import (FrontierPoint, dense_point, quantized_point, sixteen_bit_of,
                                          structured_point, sweep_point)

#: The protocol fields two results must share for their perplexities to be compared on one chart.
PROTOCOL_FIELDS = ("calib", "nsamples", "seqlen", "seed", "eval_windows", "dtype")


def same_protocol(a: Optional[Mapping[str, Any]], b: Optional[Mapping[str, Any]]) -> bool:
    """Whether two protocol records agree on `PROTOCOL_FIELDS`."""
    return bool(a) and bool(b) and all(a.get(k) == b.get(k) for k in PROTOCOL_FIELDS)


def measured_structured(point: Mapping[str, Any]) -> Optional[dict]:
    """The 16-bit safetensors measurement of a structured point's smaller model (sizes measured on files), or
    None for a point stored before sizes were measured."""
    for record in (point.get("sizes") or {}).get("measured") or ():
        if record.get("what") == "structured" and record.get("format") == "safetensors-16bit":
            return record
    return None


def _start_words(spec: Mapping[str, Any]) -> Optional[str]:
    """How a quantize job names its starting model when it is a folder ("structured (folder small)")."""
    if spec.get("structured"):
        return f"structured ({Path(str(spec['structured'])).name})"
    if spec.get("mask"):
        return f"mask ({Path(str(spec['mask'])).name})"
    return None


def collect_points(protocol: Mapping[str, Any], frontiers: Sequence[Mapping] = (), quantized: Sequence[Mapping] = (),
                   sweeps: Sequence[Mapping] = (), structured: Sequence[Mapping] = (),
                   dense_files: Optional[Mapping[str, Any]] = None) -> list[FrontierPoint]:
    """Frontier points from finished job results of one model, newest first within each kind, of `protocol` only.

    frontiers / quantized / sweeps / structured: [{"id", "spec", "result"}] (`stored_results.finished_results`);
    dense_files: the dense model's 16-bit safetensors measurement when known elsewhere (the sizes module's cache);
    otherwise a frontier job's dense point or a dense-start quantized record's 16-bit copy gives it. The dense
    model's perplexity comes from the first result that measured it. Without a dense size or perplexity there is
    no dense point (and `build.build_frontier` says what to measure)."""
    points: list[FrontierPoint] = []
    dense_ppl: dict[str, float] = {}
    for job in frontiers:
        result = job["result"]
        if not same_protocol(result.get("protocol"), protocol):
            continue
        for point in frontier_points(result["frontier"]):
            points.append(FrontierPoint(**{**point.__dict__, "source": {**point.source, "job": job["id"]}}))
            if point.family == "dense" and dense_files is None:
                dense_files = point.sizes["safetensors-16bit"]
    for job in quantized:
        record = job["result"]
        if not same_protocol(record.get("protocol"), protocol):
            continue
        spec = job.get("spec") or {}
        points.append(quantized_point(record, {"kind": "quantized", "job": job["id"]}, _start_words(spec)))
        if (record.get("setting") or {}).get("start") in ("dense", "joint"):
            for corpus, value in (record.get("dense_ppl") or {}).items():
                dense_ppl.setdefault(corpus, float(value))
            if dense_files is None and sixteen_bit_of(record):
                dense_files = sixteen_bit_of(record)
    for job in sweeps:
        result = job["result"]
        if not same_protocol(result.get("protocol"), protocol):
            continue
        for corpus, value in ((result.get("dense") or {}).get("ppl") or {}).items():
            dense_ppl.setdefault(corpus, float(value))
        if dense_files is not None:
            points.extend(sweep_point(p, dense_files, {"kind": "sweep", "job": job["id"]})
                          for p in result.get("points") or [])
    for job in structured:
        result = job["result"]
        if not same_protocol(result.get("protocol"), protocol):
            continue
        for corpus, value in (result.get("dense_ppl") or {}).items():
            dense_ppl.setdefault(corpus, float(value))
        for point in result.get("points") or []:
            measured = measured_structured(point)
            if measured is not None:
                points.append(structured_point(point, measured, {"kind": "structured", "job": job["id"]}))
    if dense_files is not None and dense_ppl and not any(p.family == "dense" for p in points):
        points.insert(0, dense_point(dense_ppl, dense_files, {"kind": "dense"}))
    elif dense_ppl:  # a frontier job's dense point may lack a corpus another result measured
        for i, p in enumerate(points):
            if p.family == "dense":
                points[i] = FrontierPoint(**{**p.__dict__, "ppl": {**dense_ppl, **p.ppl}})
    return points


def stored_points(store, model: str, protocol: Mapping[str, Any], dense_files: Optional[Mapping] = None,
                  limit: int = 20) -> list[FrontierPoint]:
    """`collect_points` over the finished jobs of the model source `model` in `store`."""
    from pruning_core.stored_results import finished_results

    found = {kind: finished_results(store, kind, model, limit) for kind in ("frontier", "quantize", "sweep",
                                                                            "structured")}
    return collect_points(protocol, found["frontier"], found["quantize"], found["sweep"], found["structured"],
                          dense_files)

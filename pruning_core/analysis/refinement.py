"""The default sensitivity map: a trustworthy first map in about a minute, refined in the background to exact.

Refinement 1 is the second-order (Fisher) estimate (`analysis.second_order`) on the exact metric's own probe
windows: a complete map after one backward pass per window, its method's masks from the first
`FIRST_VIEW_NSAMPLES` calibration windows and its passes in bf16 where the CPU computes bf16 natively (the
statistics walk and fp32 backward passes made the first map of the command's defaults take 105 s on 2 cores). Refinement 2 is the exact map on the same probe,
computed row by row in `spread_order` (shallow, deep, middle, ...), so while it runs the rows already finished
are an even sample of the depth: after each one the rank agreement of refinement 1 with the exact rows is
measured again and shown. When the exact map is complete it replaces the estimate, with the agreement between
the two refinements over every cell.

Each state is a *view*: the map document being shown plus ``refinement`` = {"step", "of", "name", "final",
"agreement" ({"spearman", "cells", "scope", "against"} or None), "trusted"}. A view whose map is not exact
is trusted only when its measured agreement reaches `TRUSTED_AGREEMENT`; pages withhold their plain-language
reading otherwise.

`run_sensitivity_job` (the "sensitivity" job kind) lives here, above `analysis.sensitivity`, because it runs
either a plain `compute_sensitivity` or, for the default metric "auto", this refinement.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

from pruning_core.analysis.sensitivity import (
    REFINE,
    TRUSTED_AGREEMENT,
    SensitivitySpec,
    agreement,
    compute_sensitivity,
)
from pruning_core.devices.placement import cpu_has_native_bf16
from pruning_core.executors.base import make_executor
from pruning_core.store import content_hash
from pruning_core.models import LoadedModel, load_model
from pruning_core.progress import ProgressFn, no_progress, sub_progress
from pruning_core.protocol import Protocol

#: (metric, what the page calls it) of each refinement, in order.
REFINEMENTS = (
    ("fisher", "second-order estimate"),
    ("exact", "exact loss increase"),
)
#: Exact rows needed before a sampled agreement is reported (7 cells a row on a Llama layer).
MIN_SAMPLE_ROWS = 2
#: Calibration windows of the first view's masks, when the protocol asks for more (the exact map keeps all of
#: them). The calibration statistics walk costs in proportion to the windows: about half of the first map's 105 s
#: at the command's 64 on 2 cores; with 32 windows and bf16 passes (FIRST_VIEW_DTYPE) the first view is the
#: setting benchmarks/first_map.py measured at about 50 s with agreement 0.92 with the exact map.
FIRST_VIEW_NSAMPLES = 32


#: Autocast dtype of the first view's gradient passes on a CPU with native bf16 (`cpu_has_native_bf16`): about
#: twice as fast as fp32 there; the sums stay fp32 and the exact map keeps the protocol's dtype.
FIRST_VIEW_DTYPE = "bfloat16"


def first_view_dtype(dtype: str) -> str:
    """The first view's gradient-pass dtype: FIRST_VIEW_DTYPE where the CPU computes bf16 natively, else `dtype`."""
    return FIRST_VIEW_DTYPE if cpu_has_native_bf16() else dtype


def first_view_protocol(protocol: Protocol) -> Protocol:
    """The protocol of the first view's masks: `protocol` with at most `FIRST_VIEW_NSAMPLES` calibration windows
    (the first ones of the same seeded draw, so the statistics are of a subset of the exact map's windows)."""
    return replace(protocol, nsamples=min(int(protocol.nsamples), FIRST_VIEW_NSAMPLES))


def is_trusted(document: dict, measured: dict | None) -> bool:
    """An exact map is its own truth; any other map needs a measured agreement of at least the threshold."""
    if document.get("metric") == "exact":
        return True
    value = (measured or {}).get("spearman")
    return value is not None and math.isfinite(value) and value >= TRUSTED_AGREEMENT


def view_of(document: dict, step: int, measured: dict | None) -> dict:
    """The map `document` as refinement `step` (1-based), with its measured agreement (or None)."""
    _metric, name = REFINEMENTS[step - 1]
    return {**document, "refinement": {
        "step": step, "of": len(REFINEMENTS), "name": name, "final": step == len(REFINEMENTS),
        "agreement": measured, "trusted": is_trusted(document, measured)}}


def refine_sensitivity(loaded: LoadedModel, protocol: Protocol, method: str, sparsity: float,
                       probe_windows: int = 8, store=None, progress: ProgressFn | None = None,
                       on_view: Callable[[dict], None] | None = None, *, dtype: str | None = None,
                       layers: Sequence[int] | None = None, executor=None) -> dict:
    """Run both refinements of one map; `on_view(view)` sees every state worth showing, newest last.

    Returns {"maps": [estimate, exact], "correlations": [...], "views": [...], "view": the final view,
    "execution": where the exact rows ran}. Everything is stored as `compute_sensitivity` stores it, so a
    stopped refinement resumes where it was. executor: where the exact rows run (`compute_sensitivity`).
    The estimate's masks come from `first_view_protocol` (at most FIRST_VIEW_NSAMPLES calibration windows) and
    its gradient passes run in `first_view_dtype`, so the first view comes soon; the exact map's masks come from
    `protocol` itself and its probes run in `dtype`. Each map records its own protocol and probe dtype.
    """
    progress = progress or no_progress
    views: list[dict] = []
    estimate: dict = {}
    exact_rows: dict[int, list[float]] = {}

    def show(view: dict) -> None:
        views.append(view)
        if on_view is not None:
            on_view(view)

    def map_done(document: dict) -> None:
        if document["metric"] == "fisher":
            estimate["doc"] = document
            show(view_of(document, 1, None))
        else:
            measured = {**agreement(estimate["doc"], dict(zip(document["layers"], document["values"]))),
                        "against": "exact"} if estimate else None
            show(view_of(document, 2, measured))

    def row_done(_sparsity: float, layer: int, values: list[float], _layer_value: float) -> None:
        exact_rows[layer] = values
        if estimate and MIN_SAMPLE_ROWS <= len(exact_rows) < len(estimate["doc"]["layers"]):
            measured = {**agreement(estimate["doc"], exact_rows), "against": "exact"}
            show(view_of(estimate["doc"], 1, measured))

    first, first_dtype = first_view_protocol(protocol), first_view_dtype(dtype or protocol.dtype)
    if first == protocol and first_dtype == (dtype or protocol.dtype):  # one call: one statistics walk
        result = compute_sensitivity(loaded, protocol, method, [sparsity], [m for m, _ in REFINEMENTS],
                                     probe_windows, store, progress, dtype=dtype, layers=layers, on_map=map_done,
                                     on_exact_row=row_done, executor=executor)
        return {**result, "views": views, "view": views[-1]}
    # The estimate on the first windows, its agreement measured by the exact map (on every window) that follows.
    n_layers = len(layers) if layers is not None else len(loaded.adapter.decoder_layers(loaded.model))
    share = _first_view_share(protocol, first, int(probe_windows), n_layers)
    estimated = compute_sensitivity(loaded, first, method, [sparsity], ["fisher"], probe_windows, store,
                                    sub_progress(progress, 0.0, share), dtype=first_dtype, layers=layers,
                                    agreement_layers=0, on_map=map_done)
    exact = compute_sensitivity(loaded, protocol, method, [sparsity], ["exact"], probe_windows, store,
                                sub_progress(progress, share, 1.0), dtype=dtype, layers=layers, on_map=map_done,
                                on_exact_row=row_done, executor=executor)
    (estimate_doc,), (exact_doc,) = estimated["maps"], exact["maps"]
    measured = agreement(estimate_doc, dict(zip(exact_doc["layers"], exact_doc["values"])))
    return {"maps": [estimate_doc, exact_doc],
            "correlations": [{"sparsity": exact_doc["sparsity"], "proxy": "fisher", **measured}],
            "execution": exact["execution"], "views": views, "view": views[-1]}


def _first_view_share(protocol: Protocol, first: Protocol, probe_windows: int, n_layers: int) -> float:
    """The progress share of the first view, in forward passes of one window through the model: its statistics
    walk and backward passes (about 3 forwards each) against the exact map's own walk and its rows (a row of
    layer l runs layers l..end once per module kind and once more for the whole layer: about n_layers / 2
    layers x 8 passes on average over a Llama layer's 7 kinds)."""
    first_work = first.nsamples + 3 * probe_windows
    exact_work = protocol.nsamples + probe_windows * 8 * n_layers / 2
    return first_work / (first_work + exact_work)


def run_sensitivity_job(spec: dict, store, progress: ProgressFn) -> dict:
    """Job entry (`jobs.JOB_KINDS["sensitivity"]`): `spec` is `SensitivitySpec.to_dict()`.

    Maps go to `store` as they finish, so a cancelled or killed job resumes at map granularity (exact maps at
    row granularity).

    Where the exact rows run is the spec's "executor" (absent = this process): it changes no number, so it is
    never in a map key.
    """
    job = SensitivitySpec.from_dict(spec).validate()
    executor = make_executor(job.executor)  # a bad setting or a missing Ray fails before the load
    progress(0.0, f"loading the model ({job.model})")  # seconds to minutes: say so, not "starting"
    loaded = load_model(job.model)
    if job.metrics == (REFINE,):
        return _refine_job(job, loaded, store, progress, executor)
    return compute_sensitivity(
        loaded, job.protocol, job.method, list(job.sparsities), list(job.metrics), int(job.probe_windows),
        store=store, progress=progress, dtype=job.dtype, layers=None if job.layers is None else list(job.layers),
        executor=executor,
    )


def live_views_key(spec: dict) -> str:
    """Store key of the views a running refinement job has shown so far (see `live_views`)."""
    return content_hash({"sensitivity_views_of": SensitivitySpec.from_dict(spec).identity()})


def live_views(spec: dict, store) -> list[dict]:
    """The newest view of each sparsity of a refinement job, while it runs or after (empty before the first)."""
    found = store.get_result(live_views_key(spec)) if store is not None else None
    return list((found or {}).get("views", {}).values())


def _refine_job(job: SensitivitySpec, loaded: LoadedModel, store, progress: ProgressFn, executor=None) -> dict:
    """The default map: each sparsity refined from the second-order estimate to exact; every view is stored
    at once under `live_views_key`, so the page and the CLI show the newest refinement while the job runs.
    On an executor, each sparsity's exact rows are one run of it; "execution" sums their rows and seconds."""
    views: dict[str, dict] = {}
    key = live_views_key(job.to_dict())
    maps, correlations = [], []
    execution: dict = {}
    count = len(job.sparsities)
    for index, sparsity in enumerate(job.sparsities):
        def on_view(view: dict, sparsity: float = sparsity) -> None:
            views[f"{sparsity:g}"] = view
            if store is not None:
                store.put_result(key, "sensitivity_views", {"views": views})

        out = refine_sensitivity(loaded, job.protocol, job.method, sparsity, int(job.probe_windows), store,
                                 sub_progress(progress, index / count, (index + 1) / count), on_view=on_view,
                                 dtype=job.dtype, layers=None if job.layers is None else list(job.layers),
                                 executor=executor)
        maps += out["maps"]
        correlations += out["correlations"]
        execution = _add_execution(execution, out["execution"])
    return {"maps": maps, "correlations": correlations, "views": [views[f"{s:g}"] for s in job.sparsities],
            "execution": execution}


def _add_execution(total: dict, part: dict) -> dict:
    """The "execution" block of two calls of `compute_sensitivity` together: rows and seconds added up."""
    if not total:
        return dict(part)
    seconds = [total["rows_seconds"], part["rows_seconds"]]
    return {**total,
            "rows_computed": total["rows_computed"] + part["rows_computed"],
            "startup_seconds": total["startup_seconds"] + part["startup_seconds"],
            "rows_seconds": None if None in seconds else sum(seconds),
            "worker_start_seconds": total["worker_start_seconds"] + part["worker_start_seconds"]}

"""Per-layer x per-module sensitivity maps: where can this model be pruned, and where does it hurt?

A map is a (decoder layers x module kinds) matrix for one method and one sparsity s, with one of four metrics:

- ``exact``: the increase in mean token NLL (nats/token) on a fixed probe set (the first `probe_windows`
  evaluation windows of the calibration corpus) when that one module alone is pruned to s with the method
  (mask from dense calibration statistics) and everything else stays dense. Made fast by running the dense
  model once over the probe and keeping every layer's input hidden states, so probing a module in layer L
  runs only layers L..end, then the final norm and the LM head (about half the layer forwards of a full pass).
- ``reconstruction``: the module's relative output error ||W X - W_s X||^2 / ||W X||^2 on the calibration
  activations, from the Hessian H = 2 X X^T / n already collected for the method:
  ||dW X||_F^2 = (n/2) tr(dW H dW^T), so no extra forward pass is needed (the n/2 cancels in the ratio).
- ``taylor``: the first-order estimate sum over the pruned weights of |W * dL/dW|, L the mean token NLL of a
  few calibration windows, from one backward pass per window (gradients summed).
- ``fisher``: the second-order estimate of the exact value from one backward pass per probe window
  (`analysis.second_order`).

Per-layer aggregates (``layer_values``): for ``exact`` the loss increase when every prunable linear of the
layer is pruned at once; for ``reconstruction`` the mean of the layer's module errors; for ``taylor`` and
``fisher`` the sum. The Spearman rank correlation of each proxy against ``exact`` (over all cells, or over a
sample of exact rows when the exact map was not asked for) tells the user how far a proxy can be trusted.

With a store, every finished map is stored under a content hash of everything that determines it (and the
rows of an unfinished exact map as they finish), so a second call is instant and a killed job resumes.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field, fields, replace

import torch
import torch.nn.functional as F

from pruning_core.analysis.second_order import gradient_moments, prunable_weight_gradients, pruning_delta
from pruning_core.errors import ConfigError
from pruning_core.devices.cpu_attention import blocked_attention
from pruning_core.executors.base import ExecutorConfig, WorkerRecipe, make_executor
from pruning_core.masks import UNSTRUCTURED, applied_masks, check_sparsity
from pruning_core.methods import MethodOptions, get_method
from pruning_core.metrics import EVAL_DTYPES, autocast_for, nll_from_hidden
from pruning_core.models import LoadedModel, is_transposed, to_native, weight_matrix
from pruning_core.packed_masks import PackedMasks
from pruning_core.progress import ProgressFn, no_progress
from pruning_core.protocol import Protocol, calibration_ids, corpus_key, evaluation_ids
from pruning_core.spec import JobSpec
from pruning_core.walk import LayerInputs, batches_of, capture_layer_inputs, run_layer

METRICS = ("exact", "fisher", "reconstruction", "taylor")
PROXIES = ("fisher", "reconstruction", "taylor")
#: The default "metric": the refinement of `analysis.refinement` (second-order estimate, then exact), shown
#: as views with their measured agreement.
REFINE = "auto"
#: Metrics computed on the probe windows (the exact metric's own text), so their key names the probe.
PROBE_METRICS = ("exact", "fisher")
#: Calibration windows whose gradients the Taylor proxy sums (one backward pass per window, so memory does
#: not grow with this).
TAYLOR_WINDOWS = 8
#: Windows per backward pass of the Taylor proxy: one, because the autograd activations of a window (about 1.4 GB
#: for 512 tokens of the embedded model, logits included) dominate its peak memory.
TAYLOR_BATCH = 1
#: How the per-layer aggregate of each metric is formed (recorded in every map).
LAYER_AGGREGATE = {
    "exact": "loss increase with every module of the layer pruned at once",
    "fisher": "sum of the layer's module estimates (interactions inside the layer ignored)",
    "reconstruction": "mean of the layer's module errors",
    "taylor": "sum of the layer's module scores",
}
#: How progress messages name each proxy.
PROXY_LABELS = {"fisher": "second-order estimate", "reconstruction": "reconstruction", "taylor": "taylor"}
UNITS = {
    "exact": "increase of mean token NLL on the probe (nats/token)",
    "fisher": "second-order estimate of the increase of mean token NLL on the probe (nats/token)",
    "reconstruction": "relative output error ||W X - W_s X||^2 / ||W X||^2 on calibration inputs (unitless)",
    "taylor": "sum over pruned weights of |W * dL/dW|, L = mean token NLL of calibration windows (nats)",
}
#: Rows of the exact map computed to measure a proxy's agreement when the full exact map is not asked for.
AGREEMENT_SAMPLE_LAYERS = 3
#: Below this Spearman rank agreement with the exact metric, a proxy's ranking is not to be read as advice.
TRUSTED_AGREEMENT = 0.7
# Bump when a metric's computation changes, so stored maps are not reused (and a resumed map never mixes rows
# of two computations). 2: bf16 probes on CPU run the blocked attention kernel (devices/cpu_attention.py).
_ALGORITHM_VERSION = "2"


# --------------------------------------------------------------------------------------------- helpers

def final_norm(loaded: LoadedModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function from the last decoder layer's output to the LM head's input (final norm, projections).

    The adapter knows it for every family (explicit paths for the overrides, discovered for the rest)."""
    return loaded.adapter.final_norm(loaded.model)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation of two equally long sequences (average ranks for ties); NaN if undefined."""
    from scipy.stats import spearmanr

    pairs = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return float("nan")
    a, b = zip(*pairs)
    if len(set(a)) < 2 or len(set(b)) < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def map_key(loaded: LoadedModel, calib_identity: dict, probe_identity: str, protocol: Protocol, method: str,
            metric: str, sparsity: float, probe_windows: int, dtype: str, layers: Sequence[int],
            taylor_windows: int) -> dict:
    """Everything that determines one map (hash it with `store.content_hash`)."""
    from pruning_core.provenance import library_versions

    versions = library_versions()
    return {
        "kind": "sensitivity_map",
        "algorithm": _ALGORITHM_VERSION,
        "model": loaded.fingerprint,
        "calib": calib_identity,
        "probe": probe_identity if metric in PROBE_METRICS else None,
        "protocol": protocol.to_dict(),
        "method": method,
        "metric": metric,
        "sparsity": float(sparsity),
        "probe_windows": int(probe_windows),
        "probe_dtype": dtype if metric in PROBE_METRICS else "float32",
        "layers": list(layers),
        "taylor_windows": taylor_windows if metric == "taylor" else None,
        "versions": {k: versions[k] for k in ("prunescope", "torch", "transformers")},
    }


def spread_order(layers: Sequence[int]) -> list[int]:
    """`layers` reordered so every prefix samples the depth evenly: first, last, middle, then the middles of
    the gaps (0, 29, 14, 7, 21, ... for 30 layers)."""
    layers = list(layers)
    if len(layers) <= 2:
        return layers
    order, chosen = [0, len(layers) - 1], {0, len(layers) - 1}
    gaps = [(0, len(layers) - 1)]
    while gaps:
        next_gaps = []
        for lo, hi in gaps:
            mid = (lo + hi) // 2
            if mid not in chosen:
                order.append(mid)
                chosen.add(mid)
            if mid - lo > 1:
                next_gaps.append((lo, mid))
            if hi - mid > 1:
                next_gaps.append((mid, hi))
        gaps = next_gaps
    return [layers[i] for i in order]


def agreement(proxy: dict, exact_rows: dict[int, list[float]]) -> dict:
    """Spearman rank agreement of a proxy map with exact values over the cells both have.

    exact_rows: {layer: values of that exact row}. Returns {"spearman", "cells", "scope"} ("all cells" when
    every row of the proxy map is covered, else "sample of N cells (layers ...)").
    """
    pairs = [(p, e) for layer, row in zip(proxy["layers"], proxy["values"]) if layer in exact_rows
             for p, e in zip(row, exact_rows[layer])]
    covered = [layer for layer in proxy["layers"] if layer in exact_rows]
    scope = ("all cells" if len(covered) == len(proxy["layers"]) else
             f"sample of {len(pairs)} cells (layers {', '.join(str(l) for l in sorted(covered))})")
    value = spearman([p for p, _ in pairs], [e for _, e in pairs]) if pairs else float("nan")
    return {"spearman": value, "cells": len(pairs), "scope": scope}


def probe_ids(loaded: LoadedModel, protocol: Protocol, probe_windows: int) -> torch.Tensor:
    """(probe_windows, seqlen) token ids of the exact metric's probe: the first windows of the calibration
    corpus's evaluation split (held out from the calibration windows)."""
    windows = int(probe_windows)
    return evaluation_ids(loaded, protocol.calib, replace(protocol, eval_windows=windows),
                          protocol.calib_column)[:windows]


class _ProbeCache:
    """The dense model's hidden states at every layer input over the probe windows, and the probe loss.

    hidden[L] is the input of decoder layer L (hidden[n_layers] = the last layer's output), per batch, fp32.
    Memory: (layers + 1) x probe tokens x hidden x 4 bytes (~290 MB for 8 x 512 tokens of a 576-wide model).
    """

    def __init__(self, loaded: LoadedModel, probe_ids: torch.Tensor, batch_size: int, dtype: str,
                 tick: Callable[[str], None]):
        self.loaded = loaded
        self.probe_ids = probe_ids  # (n, seqlen)
        self.batches = batches_of(probe_ids, batch_size)
        self.dtype = dtype
        self.norm = final_norm(loaded)
        head = loaded.model.get_output_embeddings()
        # Under bf16 every probe's head would cast the (vocab x hidden) weight again (28M values on the embedded
        # model); one bf16 copy, made here, serves every probe (the head is never pruned).
        self.head = copy.deepcopy(head).to(torch.bfloat16) if dtype == "bfloat16" else head
        self.layers = loaded.adapter.decoder_layers(loaded.model)
        self.tokens = probe_ids.shape[0] * (probe_ids.shape[1] - 1)  # predicted tokens
        # The dense pass and every probe run the same attention kernel (the blocked one on CPU in bf16, see
        # devices/cpu_attention.py), so a map value (probe loss - dense loss) holds no kernel difference.
        with autocast_for(dtype):
            current = capture_layer_inputs(loaded, probe_ids, batch_size)
            self.hidden: list[list[torch.Tensor]] = [current.hidden]
            self.kwargs = current.kwargs
            with blocked_attention(loaded.model):
                for index, layer in enumerate(self.layers):
                    tick(f"dense probe: layer {index + 1}/{len(self.layers)}")
                    current = LayerInputs(run_layer(layer, current), self.kwargs)
                    self.hidden.append(current.hidden)
        self.baseline = self.loss_from(len(self.layers), tick)

    def loss_from(self, start: int, tick: Callable[[str], None]) -> float:
        """Mean token NLL (nats) of the model as it is now, running layers start..end from cached inputs."""
        current = LayerInputs(self.hidden[start], self.kwargs)
        with torch.inference_mode(), autocast_for(self.dtype), blocked_attention(self.loaded.model):
            for index in range(start, len(self.layers)):
                current = LayerInputs(run_layer(self.layers[index], current), self.kwargs)
                tick("")
            total = 0.0
            for states, ids in zip(current.hidden, self.batches):
                total += float(nll_from_hidden(self.norm(states), ids, self.head).double().sum())
        return total / self.tokens


class _MaskCache:
    """Masks (and SparseGPT's updated weights) of one sparsity, computed once per module and reused; the masks are
    held bit-packed (`PackedMasks`: 1/8 byte per weight, 0.35 GB instead of 2.8 GB for a 3B model)."""

    def __init__(self, loaded: LoadedModel, method: str, statistics, sparsity: float):
        self.loaded, self.method, self.statistics, self.sparsity = loaded, get_method(method), statistics, sparsity
        self._keep = PackedMasks()
        self._weights: dict[str, torch.Tensor | None] = {}

    def get(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(keep (out, in) bool, new weight (out, in) fp32 or None) for the qualified module `name`."""
        if name not in self._keep:
            module = self.loaded.model.get_submodule(name)
            with torch.no_grad():
                source = weight_matrix(module).detach().to(torch.float32).contiguous()
                stats = self.statistics.by_module.get(name) if self.statistics is not None else None
                keep, new_weight = self.method.prune(source, stats, self.sparsity, UNSTRUCTURED, MethodOptions())
            self._keep[name], self._weights[name] = keep, new_weight
            return keep, new_weight
        return self._keep[name], self._weights[name]

    def native(self, names: Sequence[str]) -> tuple[dict, dict | None]:
        """masks, weights in the modules' native layout for `applied_masks`."""
        masks, weights = {}, {}
        for name in names:
            module = self.loaded.model.get_submodule(name)
            keep, new_weight = self.get(name)
            masks[name] = to_native(module, keep)
            if new_weight is not None:
                weights[name] = to_native(module, new_weight.to(module.weight.dtype))
        return masks, (weights or None)

    def drop_layer(self, names: Sequence[str]) -> None:
        for name in names:
            self._keep.pop(name, None)
            self._weights.pop(name, None)


def _taylor_scores(loaded: LoadedModel, calib_ids: torch.Tensor, windows: int, batch_size: int,
                   tick: Callable[[str], None]) -> dict[str, torch.Tensor]:
    """|W * dL/dW| (out, in) fp32 per prunable module; L = mean token NLL over the first `windows` windows.

    Gradients are enabled only for the prunable weights (and restored after); the batches' gradients
    accumulate in `.grad`, each batch's loss scaled so the total is the mean over all predicted tokens.
    """
    model = loaded.model
    modules = loaded.adapter.prunable_modules(model)
    ids = calib_ids[:windows]
    total_tokens = ids.shape[0] * (ids.shape[1] - 1)
    # The gradients are read inside the context, before it restores the flags and clears them.
    with prunable_weight_gradients(model, modules):
        for i, batch in enumerate(batches_of(ids, batch_size)):
            tick(f"taylor: backward {i + 1}/{math.ceil(ids.shape[0] / batch_size)}")
            logits = model(input_ids=batch, use_cache=False).logits  # (b, T, V)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   batch[:, 1:].reshape(-1), reduction="sum") / total_tokens
            loss.backward()
            del logits, loss
        scores = {}
        for name, module in modules.items():
            grad = module.weight.grad
            module.weight.grad = None
            # |W * G| written into the gradient's own buffer: no second copy of every prunable weight.
            product = grad.mul_(module.weight.detach()).abs_() if grad is not None \
                else torch.zeros_like(module.weight)
            scores[name] = product.t().contiguous() if is_transposed(module) else product  # (out, in)
        return scores


def _relative_reconstruction(weight: torch.Tensor, keep: torch.Tensor, new_weight: torch.Tensor | None,
                             hessian: torch.Tensor) -> float:
    """||(W - W_s) X||^2 / ||W X||^2 = tr(dW H dW^T) / tr(W H W^T); W, keep (out, in), H (in, in)."""
    delta = pruning_delta(weight, keep, new_weight)        # (out, in); its sign cancels in the square
    num = float(((delta @ hessian) * delta).sum(dtype=torch.float64))
    den = float(((weight @ hessian) * weight).sum(dtype=torch.float64))
    return num / den if den > 0 else float("nan")


# ------------------------------------------------------------------------------------------------ main

def compute_sensitivity(loaded: LoadedModel, protocol: Protocol, method: str, sparsities: Sequence[float],
                        metrics: Sequence[str] = METRICS, probe_windows: int = 8, store=None,
                        progress: ProgressFn | None = None, *, dtype: str | None = None,
                        layers: Sequence[int] | None = None, taylor_windows: int = TAYLOR_WINDOWS,
                        agreement_layers: int = AGREEMENT_SAMPLE_LAYERS,
                        on_map: Callable[[dict], None] | None = None,
                        on_exact_row: Callable[[float, int, list[float], float], None] | None = None,
                        executor=None) -> dict:
    """Sensitivity maps of `loaded` for `method` at each sparsity and metric, plus proxy-vs-exact correlations.

    Returns {"maps": [map per (metric, sparsity)], "correlations": [{"sparsity", "proxy", "spearman", "cells",
    "scope"}], "execution": {"executor", "workers", "rows_computed" (exact rows computed, not read from the
    store), "startup_seconds", "rows_seconds" (wall seconds of the rows on an executor; None locally, where
    rows run between the maps), "worker_start_seconds"}}. A proxy is never returned without its measured agreement: where the exact map of its sparsity is
    not asked for, the exact metric is computed on `agreement_layers` rows spread over the depth (stored as
    rows of the exact map, so a later exact map reuses them) and the Spearman is over those cells;
    agreement_layers=0 only for a caller that measures the agreement itself (`refinement`, from its exact map).
    Exact rows are computed in `spread_order` (shallow, deep, middle, ...) so an early stop leaves a sample.
    on_map(document) sees each map as it is finished; on_exact_row(sparsity, layer, values, layer_value) each
    exact row.
    Each map: layers, modules, values (layers x modules), metric, method, sparsity, baseline_loss (dense mean
    token NLL on the probe, nats), module_names, module_sizes ([out, in]), layer_values, layer_aggregate,
    protocol (+ probe_windows, probe_dtype, taylor_windows), seconds, units, cached.
    dtype: compute dtype of the exact probes ("float32" | "bfloat16"; default the protocol's).
    layers: decoder layer indices to map (default all). The model's weights are left bit-identical.
    executor: where the exact rows not in `store` are computed: None or an `ExecutorConfig` of kind "local"
    (this process, between the maps, in `spread_order`), an `ExecutorConfig` of kind "ray" (Ray workers, each
    loading `loaded.source` itself; every missing row of this call's exact maps and agreement samples is one
    `ExactRowTask`, sent after the proxies, which stay here), or an executor object. Numbers and store keys
    do not depend on it; on an executor an exact map is finished (on_map) after the proxies of the call.
    """
    progress = progress or no_progress
    if executor is None or isinstance(executor, ExecutorConfig):
        executor = make_executor(executor)  # a missing Ray fails here, before any work
    remote = executor.config.kind != "local"
    protocol = protocol.validate()
    method_obj = get_method(method)
    method = method_obj.name
    sparsities = [check_sparsity(s) for s in sparsities]
    if not sparsities:
        raise ConfigError("No sparsity given; give at least one, e.g. 0.5.")
    metrics = [m.strip().lower() for m in metrics]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ConfigError(f"Unknown sensitivity metric(s) {unknown}; choose from {', '.join(METRICS)}.")
    if int(probe_windows) < 1:
        raise ConfigError(f"probe_windows must be a positive integer, got {probe_windows}.")
    dtype = dtype or protocol.dtype
    if dtype not in EVAL_DTYPES:
        raise ConfigError(f"Probe dtype '{dtype}' is unknown; use one of {', '.join(EVAL_DTYPES)}.")
    n_layers = len(loaded.adapter.decoder_layers(loaded.model))
    layer_list = list(range(n_layers)) if layers is None else sorted({int(i) for i in layers})
    if not layer_list or layer_list[0] < 0 or layer_list[-1] >= n_layers:
        raise ConfigError(f"Layers {layers} are outside 0..{n_layers - 1}.")
    kinds = loaded.adapter.module_kinds
    start_all = time.perf_counter()

    progress(0.0, "reading the calibration corpus")
    calib_identity = corpus_key(protocol.calib, "calibration", protocol.calib_column)
    probe_identity = corpus_key(protocol.calib, "evaluation", protocol.calib_column)["sha256"]

    # ---------------------------------------------------------------- which maps are already stored
    wanted = [(metric, s) for s in sparsities for metric in metrics]
    keys: dict[tuple[str, float], str | None] = {}
    maps: dict[tuple[str, float], dict] = {}
    if store is not None:
        from pruning_core.store import content_hash

        for metric, s in wanted:
            keys[(metric, s)] = content_hash(map_key(loaded, calib_identity, probe_identity, protocol, method,
                                                     metric, s, int(probe_windows), dtype, layer_list,
                                                     taylor_windows))
            cached = store.get_result(keys[(metric, s)])
            if cached is not None:
                maps[(metric, s)] = {**cached, "cached": True}
    todo = [w for w in wanted if w not in maps]
    # A proxy without the exact map of its sparsity gets exact rows spread over the depth, for its agreement.
    # agreement_layers=0: the caller measures the agreement itself (the refinement, from the exact map after).
    sample_agreement = "exact" not in metrics and any(m in PROXIES for m in metrics) and int(agreement_layers) > 0

    # Work units for the progress fraction: one per layer forward of a probe, ~1/2 per cell for proxies.
    def exact_units() -> float:
        return sum((n_layers - l + 2) * (len(kinds) + 1) for l in layer_list)
    total_units = 1.0 + n_layers  # the dense probe pass
    need = method_obj.needs if todo else "none"  # every metric scores the method's masks
    if any(m == "reconstruction" for m, _ in todo):
        need = "hessian"  # the Hessian also holds what Wanda needs (its diagonal)
    calib_ratio = max(1.0, protocol.nsamples / max(1, int(probe_windows)))
    stats_units = 2.0 * n_layers * calib_ratio  # the walk's forward + hooks over the calibration windows
    if need != "none":
        total_units += stats_units
    if any(m == "taylor" for m, _ in todo):
        total_units += 3.0 * n_layers * taylor_windows / max(1, int(probe_windows))
    if any(m == "fisher" for m, _ in todo):
        total_units += 3.0 * n_layers  # one backward pass (about 3 forwards) per probe window
    for metric, _ in todo:
        total_units += exact_units() if metric == "exact" else 0.5 * len(layer_list) * len(kinds)
    if sample_agreement:
        total_units += len(sparsities) * sum((n_layers - l + 2) * (len(kinds) + 1)
                                             for l in spread_order(layer_list)[:max(1, int(agreement_layers))])
    done = [0.0]
    last_message = ["starting"]

    def advance(units: float, message: str = "") -> None:
        done[0] += units
        if message:
            last_message[0] = message
        progress(min(done[0] / total_units, 0.999), last_message[0])

    def tick(message: str) -> None:
        advance(1.0, message)

    # ---------------------------------------------------------------- shared work (only if something is left)
    probe_holder: list[_ProbeCache] = []
    statistics = None
    taylor = None
    moments = None
    masks_by_sparsity: dict[float, _MaskCache] = {}  # the method's masks, one cache per sparsity
    calib = None
    ids = None

    def probe() -> _ProbeCache:
        """The dense hidden-state cache of the exact probes, built on first use (a second-order map alone
        needs only the windows, so the first map of a refinement does not wait for it). Only called once
        something is computed, so `ids` has been read by then."""
        if not probe_holder:
            probe_holder.append(_ProbeCache(loaded, ids, protocol.batch_size, dtype, tick))
        return probe_holder[0]

    if todo or sample_agreement:
        # Tokenised only when something is computed: a fully stored result comes back without it.
        advance(0.0, "reading the probe windows (held-out text)")
        ids = probe_ids(loaded, protocol, probe_windows)
        if need == "none" and sample_agreement:
            need = method_obj.needs  # the agreement sample scores the method's masks
        if need != "none":
            from pruning_core.statistics_cache import cached_statistics

            calib = calibration_ids(loaded, protocol)
            stats_done = [0.0]

            def stats_progress(fraction: float, message: str) -> None:
                advance(stats_units * (fraction - stats_done[0]), f"calibration statistics: {message}")
                stats_done[0] = fraction

            # Shared with sweeps and other maps through the store (same model, corpus, nsamples, seqlen, seed).
            statistics = cached_statistics(loaded, protocol, need, store, calib, stats_progress)
        if any(m == "taylor" for m, _ in todo):
            calib = calib if calib is not None else calibration_ids(loaded, protocol)
            taylor_units = 3.0 * n_layers * taylor_windows / max(1, int(probe_windows))
            n_batches = min(taylor_windows, calib.shape[0])
            taylor = _taylor_scores(loaded, calib, taylor_windows, TAYLOR_BATCH,
                                    lambda m: advance(taylor_units / max(n_batches, 1), m))
        if any(m == "fisher" for m, _ in todo):
            windows = ids.shape[0]
            fisher_at = [s for m, s in todo if m == "fisher"]
            for s in fisher_at:
                masks_by_sparsity.setdefault(s, _MaskCache(loaded, method, statistics, s))

            @torch.no_grad()
            def deltas(name: str) -> dict[float, torch.Tensor]:
                """The method's change of module `name` at each sparsity of a second-order map: its gradients
                are folded into those maps' values during the backward passes (`gradient_moments`)."""
                weight = weight_matrix(loaded.model.get_submodule(name)).detach().to(torch.float32)
                return {s: pruning_delta(weight, *masks_by_sparsity[s].get(name)) for s in fisher_at}

            moments = gradient_moments(loaded, ids, dtype,
                                       lambda m: advance(3.0 * n_layers / max(windows, 1), m), deltas=deltas)
    used_windows = int(ids.shape[0]) if ids is not None else int(probe_windows)
    proto_doc = {**protocol.to_dict(), "probe_windows": used_windows,
                 "probe_dtype": dtype, "taylor_windows": taylor_windows}

    def baseline() -> float:
        """Dense mean token NLL on the probe: from the exact probes' cache, or the gradient passes' losses."""
        return moments.loss if moments is not None and not probe_holder else probe().baseline

    def exact_key(s: float) -> str | None:
        """Store key of the exact map at `s` (its rows are kept under it, also those of agreement samples)."""
        if store is None:
            return None
        from pruning_core.store import content_hash

        return content_hash(map_key(loaded, calib_identity, probe_identity, protocol, method, "exact", s,
                                    int(probe_windows), dtype, layer_list, taylor_windows))

    def finish_map(metric: str, s: float, values: list, layer_values: list, seconds: float) -> None:
        """Store the map document and hand it to on_map."""
        document = {
            "layers": layer_list,
            "modules": kinds,
            "values": values,
            "metric": metric,
            "method": method,
            "sparsity": s,
            "baseline_loss": baseline(),
            "module_names": [[loaded.adapter.qualified_name(l, k) for k in kinds] for l in layer_list],
            "module_sizes": [[list(weight_matrix(loaded.model.get_submodule(
                loaded.adapter.qualified_name(l, k))).shape) for k in kinds] for l in layer_list],
            "layer_values": layer_values,
            "layer_aggregate": LAYER_AGGREGATE[metric],
            "protocol": proto_doc,
            "model": {"name": loaded.name, "source": loaded.source, "fingerprint": loaded.fingerprint},
            "seconds": seconds,
            "units": UNITS[metric],
        }
        if store is not None:
            store.put_result(keys[(metric, s)], "sensitivity_map", document)
        maps[(metric, s)] = {**document, "cached": False}
        if on_map is not None:
            on_map(maps[(metric, s)])

    # ---------------------------------------------------------------- maps, one sparsity at a time
    rows_computed = [0]
    for s in sparsities:
        masks = masks_by_sparsity.setdefault(s, _MaskCache(loaded, method, statistics, s))
        for metric in metrics:
            if (metric, s) in maps:
                if on_map is not None:
                    on_map(maps[(metric, s)])
                continue
            if metric == "exact" and remote:
                continue  # its rows go to the executor below, after the proxies
            t0 = time.perf_counter()
            values, layer_values = _compute_map(loaded, metric, s, layer_list, kinds, masks, probe, statistics,
                                                taylor, store, keys.get((metric, s)), advance, moments,
                                                order=spread_order(layer_list) if metric == "exact" else None,
                                                on_row=None if on_exact_row is None else
                                                (lambda layer, v, lv, s=s: on_exact_row(s, layer, v, lv)),
                                                computed=rows_computed)
            finish_map(metric, s, values, layer_values, time.perf_counter() - t0)

    # ---------------------------------------------------------------- exact rows on an executor's workers
    remote_rows: dict[float, dict[int, tuple[list[float], float]]] = {}
    rows_seconds, startup = None, 0.0
    sample = spread_order(layer_list)[:max(1, int(agreement_layers))]
    if remote:
        requests: dict[float, _RowRequest] = {}
        for s in sparsities:
            if ("exact", s) in maps or s in requests:
                continue
            if ("exact", s) in wanted:
                requests[s] = _RowRequest(s, tuple(spread_order(layer_list)), keys.get(("exact", s)), True)
            elif sample_agreement and any((proxy, s) in maps for proxy in PROXIES):  # the proxies' agreement
                requests[s] = _RowRequest(s, tuple(sample), exact_key(s), False)
        rows_start = time.perf_counter()
        recipe = WorkerRecipe(build=build_exact_row_worker,
                              args=(loaded.source, loaded.fingerprint, method, statistics, ids,
                                    protocol.batch_size, dtype),
                              local=lambda: ExactRowWorker(loaded, method, statistics, ids, protocol.batch_size,
                                                           dtype))
        remote_rows, rows_computed[0] = _exact_rows_on_executor(executor, recipe, list(requests.values()),
                                                                n_layers, len(kinds), store, advance, on_exact_row)
        startup = float(getattr(executor, "startup_seconds", 0.0)) if rows_computed[0] else 0.0
        rows_seconds = time.perf_counter() - rows_start
        for s, request in requests.items():
            if request.report:
                # The baseline of an exact map is the probe's, as where its rows are computed here.
                probe()
                finish_map("exact", s, [remote_rows[s][l][0] for l in layer_list],
                           [remote_rows[s][l][1] for l in layer_list], rows_seconds)

    # ---------------------------------------------------------------- agreement of every proxy with exact
    correlations = []
    for s in sparsities:
        exact = maps.get(("exact", s))
        if exact is not None:
            rows = dict(zip(exact["layers"], exact["values"]))
        else:
            if not sample_agreement or not any((proxy, s) in maps for proxy in PROXIES):
                continue
            # No exact map asked for: measure exact rows spread over the depth, stored as rows of the exact map.
            if remote:
                rows = {layer: remote_rows[s][layer][0] for layer in sample}
            else:
                masks = masks_by_sparsity.get(s) or _MaskCache(loaded, method, statistics, s)
                values, _ = _compute_map(loaded, "exact", s, sample, kinds, masks, probe, statistics, taylor,
                                         store, exact_key(s), advance, moments, computed=rows_computed)
                rows = dict(zip(sample, values))
        for proxy in PROXIES:
            other = maps.get((proxy, s))
            if other is not None:
                correlations.append({"sparsity": s, "proxy": proxy, **agreement(other, rows)})
    progress(1.0, f"sensitivity done in {time.perf_counter() - start_all:.1f} s")
    execution = {
        "executor": executor.config.kind,
        "workers": executor.config.workers if remote else 1,
        "rows_computed": rows_computed[0],
        "startup_seconds": startup,
        "rows_seconds": rows_seconds,
        "worker_start_seconds": list(getattr(executor, "worker_start_seconds", [])) if rows_computed[0] else [],
    }
    return {"maps": [maps[w] for w in wanted], "correlations": correlations, "execution": execution}


def exact_row(probe: _ProbeCache, masks: _MaskCache, layer: int, kinds: Sequence[str],
              advance: Callable[..., None]) -> tuple[list[float], float]:
    """One row of the exact map: (loss increase per module kind, loss increase with the whole layer pruned),
    in nats/token on the probe, each module pruned alone with `masks` and the rest of the model dense.

    Runs layers `layer`..end from the probe's cached inputs, (len(kinds) + 1) times; advance(units, message)
    gets one unit per layer forward and 2 for the head of each probe (the units of `exact_units`). The one
    computation of an exact row, on the driver (`_compute_map`) and on executor workers (`ExactRowWorker`).
    """
    model, adapter = probe.loaded.model, probe.loaded.adapter
    pct = f"{masks.sparsity:g}"
    names = [adapter.qualified_name(layer, k) for k in kinds]
    row = []
    for kind, name in zip(kinds, names):
        advance(0.0, f"exact {pct}: layer {layer + 1}/{len(probe.layers)} {kind}")
        native_masks, native_weights = masks.native([name])
        with applied_masks(model, native_masks, native_weights):
            loss = probe.loss_from(layer, lambda _m: advance(1.0))
        advance(2.0)
        row.append(loss - probe.baseline)
    advance(0.0, f"exact {pct}: layer {layer + 1}/{len(probe.layers)} whole layer")
    native_masks, native_weights = masks.native(names)
    with applied_masks(model, native_masks, native_weights):
        layer_value = probe.loss_from(layer, lambda _m: advance(1.0)) - probe.baseline
    advance(2.0)
    return row, layer_value


def _read_partial(store, key: str | None) -> tuple[str | None, dict]:
    """(store key, record) of the finished rows of the unfinished exact map `key`: {"rows": {str(layer):
    {"values", "layer_value"}}}; (None, empty record) without a store or key (nothing is kept)."""
    if store is None or key is None:
        return None, {"rows": {}}
    from pruning_core.store import content_hash

    partial_key = content_hash({"partial_of": key})
    return partial_key, store.get_result(partial_key) or {"rows": {}}


def _compute_map(loaded: LoadedModel, metric: str, sparsity: float, layer_list: list[int], kinds: list[str],
                 masks: _MaskCache, probe: Callable[[], _ProbeCache], statistics, taylor, store, key: str | None,
                 advance, moments=None, order: Sequence[int] | None = None,
                 on_row: Callable[[int, list[float], float], None] | None = None,
                 computed: list[int] | None = None) -> tuple[list[list[float]], list[float]]:
    """values (layers x kinds) and layer_values of one map; exact rows are stored as they finish.

    order: the order in which rows are computed (default layer order; the values come back in layer order);
    on_row(layer, values, layer_value) sees each exact row as it finishes or is read from the store;
    computed: a one-item counter increased by each exact row computed here (not read from the store).
    """
    adapter = loaded.adapter
    pct = f"{sparsity:g}"
    partial_key, partial = _read_partial(store, key) if metric == "exact" else (None, {"rows": {}})

    def weight_of(name: str) -> torch.Tensor:
        return weight_matrix(loaded.model.get_submodule(name)).to(torch.float32)  # (out, in)

    # score(module name, keep (out, in), new weight or None) -> the proxy's value of that module
    proxy_scores = {
        "reconstruction": lambda name, keep, new: _relative_reconstruction(
            weight_of(name), keep, new, statistics.by_module[name].hessian),
        # Folded during the gradient passes: `compute_sensitivity` knows every second-order map's masks before them.
        "fisher": lambda name, _keep, _new: moments.estimate_at(name, sparsity),
        "taylor": lambda name, keep, _new: float(taylor[name][~keep].sum(dtype=torch.float64)),
    }
    rows: dict[int, tuple[list[float], float]] = {}
    for layer in (order if order is not None else layer_list):
        names = [adapter.qualified_name(layer, k) for k in kinds]
        if metric == "exact":
            stored = partial["rows"].get(str(layer))
            if stored is not None:
                rows[layer] = (stored["values"], stored["layer_value"])
                if on_row is not None:
                    on_row(layer, *rows[layer])
                advance((len(loaded.adapter.decoder_layers(loaded.model)) - layer + 2) * (len(kinds) + 1),
                        f"exact {pct}: layer {layer + 1} from the store")
                continue
            row, layer_value = exact_row(probe(), masks, layer, kinds, advance)
            if computed is not None:
                computed[0] += 1
            rows[layer] = (row, layer_value)
            if partial_key is not None:
                partial["rows"][str(layer)] = {"values": row, "layer_value": layer_value}
                store.put_result(partial_key, "sensitivity_partial", partial)
            if on_row is not None:
                on_row(layer, row, layer_value)
        else:  # a proxy: one number per module from its weight and the method's mask, no probe
            score = proxy_scores[metric]
            row = []
            for kind, name in zip(kinds, names):
                advance(0.5, f"{PROXY_LABELS[metric]} {pct}: layer {layer + 1} {kind}")
                keep, new_weight = masks.get(name)
                row.append(score(name, keep, new_weight))
            rows[layer] = (row, sum(row) / len(row) if metric == "reconstruction" else sum(row))
    return [rows[layer][0] for layer in layer_list], [rows[layer][1] for layer in layer_list]


# ------------------------------------------------------------------------------ exact rows as executor tasks

@dataclass(frozen=True)
class ExactRowTask:
    """One row of an exact map to compute on an executor worker: decoder layer `layer` at `sparsity`."""

    sparsity: float
    layer: int


class ExactRowWorker:
    """Computes exact rows (`exact_row`) on one loaded model; no store (the driver owns it).

    Holds what every row shares: the dense probe cache (built once, from the driver's probe ids) and one mask
    cache per sparsity (from the driver's calibration statistics, None for a method without data). A row's
    masks are dropped once it is done: in one call every (sparsity, layer) is asked once.
    """

    def __init__(self, loaded: LoadedModel, method: str, statistics, probe_ids: torch.Tensor, batch_size: int,
                 dtype: str):
        self.loaded, self.method, self.statistics = loaded, method, statistics
        self.kinds = list(loaded.adapter.module_kinds)
        self.probe = _ProbeCache(loaded, probe_ids, batch_size, dtype, lambda _m: None)
        self.masks: dict[float, _MaskCache] = {}

    def run(self, task: ExactRowTask, progress: ProgressFn) -> tuple[list[float], float]:
        """(values per module kind, whole-layer value) of `task`'s row, nats/token; progress over [0, 1]."""
        masks = self.masks.get(task.sparsity)
        if masks is None:
            masks = self.masks[task.sparsity] = _MaskCache(self.loaded, self.method, self.statistics, task.sparsity)
        units = (len(self.probe.layers) - task.layer + 2) * (len(self.kinds) + 1)
        done, last = [0.0], [""]

        def advance(amount: float, message: str = "") -> None:
            done[0] += amount
            last[0] = message or last[0]
            progress(min(done[0] / units, 1.0), last[0])

        row = exact_row(self.probe, masks, task.layer, self.kinds, advance)
        masks.drop_layer([self.loaded.adapter.qualified_name(task.layer, k) for k in self.kinds])
        return row


def build_exact_row_worker(source: str, fingerprint: str, method: str, statistics, probe_ids: torch.Tensor,
                           batch_size: int, dtype: str) -> ExactRowWorker:
    """A worker in another process (a Ray actor): loads the model from `source` itself and checks that its
    weights are the driver's (`fingerprint`), so every row is computed on the model its map is keyed by."""
    from pruning_core.executors.base import load_worker_model

    loaded = load_worker_model(source, fingerprint, "this sensitivity map is computed on")
    return ExactRowWorker(loaded, method, statistics, probe_ids, batch_size, dtype)


@dataclass(frozen=True)
class _RowRequest:
    """Exact rows one call needs at one sparsity: `layers` in computing order, stored as rows of the exact map
    `key` (None: not stored); `report` says whether on_exact_row sees them (rows of an asked exact map, not
    an agreement sample)."""

    sparsity: float
    layers: tuple[int, ...]
    key: str | None
    report: bool


def _exact_rows_on_executor(executor, recipe: WorkerRecipe, requests: Sequence[_RowRequest], n_layers: int,
                            n_kinds: int, store, advance: Callable[..., None],
                            on_exact_row: Callable[[float, int, list[float], float], None] | None
                            ) -> tuple[dict[float, dict[int, tuple[list[float], float]]], int]:
    """Every row of `requests`: stored rows read from the partial records, the missing ones computed as
    `ExactRowTask`s on `executor` (in request order, so early rows sample the depth) and each written to its
    partial record as it arrives, in finish order. This driver alone reads and writes `store`.

    Returns ({sparsity: {layer: (values, layer_value)}}, rows computed). advance(units, message) gets the
    units of `exact_units` per row; a raise from it (a cancel) stops the workers, finished rows stay stored.
    """
    rows: dict[float, dict[int, tuple[list[float], float]]] = {}
    partials: dict[float, tuple[str | None, dict]] = {}
    tasks: list[ExactRowTask] = []
    reports = {r.sparsity: r.report for r in requests}

    def units(layer: int) -> float:
        return (n_layers - layer + 2) * (n_kinds + 1)

    for request in requests:
        s = request.sparsity
        partials[s] = _read_partial(store, request.key)
        rows[s] = {}
        for layer in request.layers:
            stored = partials[s][1]["rows"].get(str(layer))
            if stored is None:
                tasks.append(ExactRowTask(s, layer))
                continue
            rows[s][layer] = (stored["values"], stored["layer_value"])
            if request.report and on_exact_row is not None:
                on_exact_row(s, layer, *rows[s][layer])
            advance(units(layer), f"exact {s:g}: layer {layer + 1} from the store")
    done = [0]

    def waiting() -> None:  # called while every worker is busy: progress, and with it a cancel, gets through
        advance(0.0, f"{done[0]}/{len(tasks)} exact rows done; running on {executor.config.describe()}")

    with closing(executor.run(recipe, tasks, None, waiting)) as finished:
        for number, (values, layer_value) in finished:
            task = tasks[number]
            if task.layer in rows[task.sparsity]:  # one result per task; never store or report a row twice
                continue
            rows[task.sparsity][task.layer] = (values, layer_value)
            partial_key, partial = partials[task.sparsity]
            if partial_key is not None:
                partial["rows"][str(task.layer)] = {"values": values, "layer_value": layer_value}
                store.put_result(partial_key, "sensitivity_partial", partial)
            if reports[task.sparsity] and on_exact_row is not None:
                on_exact_row(task.sparsity, task.layer, values, layer_value)
            done[0] += 1
            advance(units(task.layer), f"exact {task.sparsity:g}: layer {task.layer + 1} done "
                                       f"({done[0]}/{len(tasks)} rows on {executor.config.describe()})")
    return rows, len(tasks)


@dataclass(frozen=True)
class SensitivitySpec(JobSpec):
    """One sensitivity-map request (the job spec of `run_sensitivity_job`). Sparsities are fractions, in the
    order the maps are made (the first is the CLI's sensitivity.json).

    method: the method each module is pruned with (unstructured; a map spans sparsities, so it has no single
    `Setting`). dtype: compute dtype of the exact probes (None = the protocol's); layers: decoder layers to map
    (None = all). executor: where the exact rows run (`ExecutorConfig`; in no key: it changes no number).
    """

    WHAT = "sensitivity"

    model: str = "embedded"
    protocol: Protocol = field(default_factory=Protocol)
    method: str = "wanda"
    sparsities: tuple[float, ...] = (0.5,)
    metrics: tuple[str, ...] = (REFINE,)
    probe_windows: int = 8
    dtype: str | None = None
    layers: tuple[int, ...] | None = None
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def validate(self) -> "SensitivitySpec":
        """Check every setting before any work starts; raises ConfigError naming the problem and the fix."""
        self.protocol.validate()
        get_method(self.method)
        if not self.sparsities:
            raise ConfigError("Choose at least one sparsity, e.g. 50 %.")
        for s in self.sparsities:
            check_sparsity(s)
        unknown = [] if self.metrics == (REFINE,) else [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise ConfigError(f"Unknown sensitivity metric(s) {unknown}; choose '{REFINE}' (the default: a fast "
                              f"estimate refined to exact) or some of {', '.join(METRICS)}.")
        if int(self.probe_windows) < 1:
            raise ConfigError(f"probe_windows must be a positive integer, got {self.probe_windows}.")
        if self.dtype is not None and self.dtype not in EVAL_DTYPES:
            raise ConfigError(f"Probe dtype '{self.dtype}' is unknown; use one of {', '.join(EVAL_DTYPES)}.")
        self.executor.validate()
        return self

    def _flat(self) -> dict:
        """JSON-able dict; optional fields left unset are omitted (so the job key of a plain map stays short)."""
        d = {"model": self.model, "protocol": self.protocol.to_dict(), "method": get_method(self.method).name,
             "sparsities": [float(s) for s in self.sparsities], "metrics": list(self.metrics),
             "probe_windows": int(self.probe_windows)}
        if self.dtype is not None:
            d["dtype"] = self.dtype
        if self.layers is not None:
            d["layers"] = [int(i) for i in self.layers]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SensitivitySpec":
        d = dict(d)
        names = {f.name for f in fields(cls)}
        for name in ("model", "protocol", "method", "sparsities"):
            if name not in d:
                raise ConfigError(f"The sensitivity job spec lacks '{name}'.")
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"Unknown sensitivity settings {unknown}; known: {', '.join(sorted(names))}.")
        d["protocol"] = Protocol(**d["protocol"])
        d["executor"] = ExecutorConfig.from_dict(d.get("executor") or {})
        d["sparsities"] = tuple(float(s) for s in d["sparsities"])
        d["metrics"] = tuple(m.strip().lower() for m in (d.get("metrics") or METRICS))
        if d.get("layers") is not None:
            d["layers"] = tuple(int(i) for i in d["layers"])
        return cls(**d)

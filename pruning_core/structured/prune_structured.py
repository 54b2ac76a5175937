"""Structured pruning in one call: score units, choose what to remove per layer, compensate, slice a copy.

`prune_structured(loaded, calib_ids, config)` never touches `loaded` (often the cached model): it deep-copies
the model, removes the chosen heads / channels / layers from the copy and returns it in a `StructuredResult`
with the kept units, exact parameter counts (real tensor sizes, before and after, decoder layers and whole
model) and timings.

How many units a layer loses (the ratio is a fraction of decoder-layer parameters, DESIGN "Structured ratio"):
- layer l's target is ratio_l x (its parameters), ratio_l = `config.ratio`, or the plan's sparsity of layer l
  counted over its linears (`SparsityPlan.layer_mean`) when a plan is given;
- with heads and channels both chosen, the target is split between attention and MLP in proportion to their
  parameters (each loses about ratio_l of its own), with what one side cannot give (at least one head unit and
  one channel stay) passed to the other; with one kind only, that kind carries the whole target;
- the count of units is the one whose removed parameters come closest to the target (units are
  indivisible, so the measured ratio differs slightly; `StructuredResult.ratio` is the measured one);
- under grouped-query attention in ``query`` head mode every key/value group loses the same number of query
  heads (the heads with the lowest scores within each group).
- ``layers``: whole decoder layers by block influence, the count closest to ratio x decoder parameters. Mixed
  with heads and/or channels, whole layers take `layer_share` of the target (the lowest-influence layers) and
  the kept layers lose heads/channels for the rest, every kept layer the same fraction of its parameters. Whole
  layers are what shortens decoding at batch 1, where per-layer overhead and weight traffic bound the time
  while width saves little (measure it: `speed.measure_speed`); widths cost less quality per parameter.
Statistics are those of the dense model (`statistics.collect_unit_statistics`), collected once; pass them
back through `statistics=` to try other ratios without another walk.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from pruning_core.plan import SparsityPlan, module_sizes, plan_for
from pruning_core.errors import ConfigError
from pruning_core.models import LoadedModel, weight_matrix
from pruning_core.progress import ProgressFn, no_progress, sub_progress
from pruning_core.structured import compensate as compensation
from pruning_core.structured.scores import check_score, unit_scores
from pruning_core.structured.slicing import (
    loadable_with_transformers,
    model_widths,
    width_fields,
    remove_layers,
    remove_units,
)
from pruning_core.structured.statistics import UnitStatistics, collect_unit_statistics
from pruning_core.structured.units import (
    HEAD_MODES,
    UNIT_KINDS,
    LayerLayout,
    consumer_columns,
    consumer_kind,
    decoder_parameters,
    layer_parameters,
    layout_for,
    model_parameters,
    unit_cost,
    unit_count,
)


@dataclass(frozen=True)
class StructuredConfig:
    """One structured pruning setting.

    units: unit kinds to remove, any of ("heads", "channels", "layers").
    ratio: target fraction of decoder-layer parameters removed, in [0, 1) (ignored for widths when `plan` is set).
    score: "magnitude", "wanda_sp", "flap" or "obs" (see `scores`); layers are always scored by block influence.
    compensate: refit the consumers' kept columns (and bias) after removal (see `compensate`).
    damping: None = shrinkage chosen by cross-validation over calibration windows (few-shot safe); a float =
        fixed shrinkage alpha as a fraction of mean diag (0.01 = the plain 1 % damped refit; inf = FLAP's bias
        correction only).
    score_damping: damping of the ``obs`` score's inverse, as a fraction of mean diag(H) (SparseGPT's 1 %).
    head_mode: "query" (remove query heads within every key/value group, groups stay equal) or "group" (remove
        whole key/value groups); the same for multi-head attention.
    plan: optional `SparsityPlan`; layer l's ratio is the plan's sparsity of layer l by parameters (heads and
        channels; layer removal uses `ratio`; not with layers mixed in).
    layer_share: with layers and heads/channels mixed, the share of the target removed as whole layers, in
        (0, 1) (0.4 at ratio 0.25: about 10 % of decoder parameters as layers, 15 % as widths); unused otherwise.
    """

    units: tuple[str, ...] = ("heads", "channels")
    ratio: float = 0.2
    score: str = "obs"
    compensate: bool = True
    damping: Optional[float] = None
    score_damping: float = 0.01
    head_mode: str = "query"
    plan: Optional[SparsityPlan] = None
    layer_share: float = 0.5

    @property
    def width_units(self) -> tuple[str, ...]:
        """The width kinds among the units (heads, channels)."""
        return tuple(u for u in self.units if u != "layers")

    @property
    def mixed(self) -> bool:
        """Whole layers and widths in one setting."""
        return "layers" in self.units and bool(self.width_units)

    def __post_init__(self) -> None:
        units = (self.units,) if isinstance(self.units, str) else tuple(self.units)
        object.__setattr__(self, "units", units)

    def validate(self) -> "StructuredConfig":
        """Check every field; raises ConfigError naming the bad value and the fix."""
        unknown = [u for u in self.units if u not in UNIT_KINDS]
        if unknown or not self.units:
            raise ConfigError(f"Structured units {unknown or '(none)'} are unknown; choose from "
                              f"{', '.join(UNIT_KINDS)}.")
        if self.mixed and not 0.0 < float(self.layer_share) < 1.0:
            raise ConfigError(f"Layer share {self.layer_share} must be a fraction in (0, 1): the part of the ratio "
                              "removed as whole layers when layers are mixed with heads/channels (e.g. 0.4).")
        if self.mixed and self.plan is not None:
            raise ConfigError("A sparsity plan spreads heads and channels over the layers; with whole layers mixed "
                              "in, use a uniform ratio (no plan) or remove heads/channels only.")
        if not 0.0 <= float(self.ratio) < 1.0:
            raise ConfigError(f"Structured ratio {self.ratio} must be a fraction in [0, 1), e.g. 0.2 for 20 % of "
                              "the decoder parameters.")
        check_score(self.score)
        if self.head_mode not in HEAD_MODES:
            raise ConfigError(f"Head mode '{self.head_mode}' is unknown; use one of {', '.join(HEAD_MODES)}.")
        if self.damping is not None and not self.damping >= 0:
            raise ConfigError(f"Damping {self.damping} must be >= 0 (or None to choose it from the data).")
        if not 0 < self.score_damping < float("inf"):
            raise ConfigError(f"Score damping {self.score_damping} must be a positive fraction such as 0.01.")
        return self

    def to_dict(self) -> dict:
        out = asdict(self)
        out["units"] = list(self.units)
        out["plan"] = self.plan.to_dict() if self.plan is not None else None
        return out


@dataclass
class ParameterCounts:
    """Parameters (real tensor elements) of the decoder layers and of the whole model (embeddings and LM head
    included, tied tensors once), before and after."""

    decoder_before: int
    decoder_after: int
    model_before: int
    model_after: int

    @property
    def decoder_removed_fraction(self) -> float:
        return 1.0 - self.decoder_after / max(self.decoder_before, 1)

    @property
    def model_removed_fraction(self) -> float:
        return 1.0 - self.model_after / max(self.model_before, 1)


@dataclass
class StructuredResult:
    """What structured pruning produced.

    loaded: the pruned copy (its own LoadedModel; the input model is untouched).
    kept: per *kept* dense layer index -> {"heads": kept head units, "channels": kept channels} (dense indices;
        a head unit is a query head in "query" mode under GQA, else a key/value group = a head for MHA).
    kept_layers: dense indices of the decoder layers that remain.
    widths: per remaining layer, {"heads", "kv_heads", "channels"} read from its tensors.
    params: `ParameterCounts`; ratio: measured fraction of decoder parameters removed.
    compensation: per dense layer index -> {consumer kind: {"alpha", "cv_error", "cv_error_removal"}}.
    loadable_with_transformers / load_note: whether a saved folder loads with plain from_pretrained, and why not.
    seconds: {"statistics", "scoring", "compensation", "slicing", "total"}.
    """

    config: StructuredConfig
    loaded: LoadedModel
    layout: LayerLayout
    kept: dict[int, dict[str, list[int]]]
    kept_layers: list[int]
    widths: list[dict]
    params: ParameterCounts
    ratio: float
    compensation: dict[int, dict[str, dict]] = field(default_factory=dict)
    loadable_with_transformers: bool = True
    load_note: str = ""
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        """Plain JSON facts for stores and reports."""
        return {"config": self.config.to_dict(), "kept_layers": self.kept_layers, "widths": self.widths,
                "parameters": asdict(self.params), "ratio": self.ratio,
                "model_removed_fraction": self.params.model_removed_fraction,
                "loadable_with_transformers": self.loadable_with_transformers, "load_note": self.load_note,
                "seconds": self.seconds}


# ------------------------------------------------------------------------------------------ how many units

def layer_ratios(loaded: LoadedModel, config: StructuredConfig) -> list[float]:
    """The fraction of each decoder layer's parameters to remove (uniform, or from the plan)."""
    layers = len(loaded.adapter.decoder_layers(loaded.model))
    if config.plan is None:
        return [float(config.ratio)] * layers
    plan = plan_for(loaded, config.plan)
    sizes = module_sizes(loaded)
    return [plan.layer_mean(i, sizes[i]) for i in range(layers)]


def removal_counts(layout: LayerLayout, linears: dict, layer_params: int, ratio: float, units: tuple[str, ...],
                   mode: str) -> dict[str, int]:
    """Units of each kind to remove from one dense layer so that the removed parameters come closest to
    ratio x layer_params (see the module docstring for the split)."""
    target = ratio * layer_params
    kinds = [u for u in ("heads", "channels") if u in units]
    cost = {u: unit_cost(layout, linears, u, mode) for u in kinds}
    # A GQA query-mode removal takes the same count from each group: its step is kv_heads query heads.
    step = {u: (layout.kv_heads if (u == "heads" and mode == "query" and layout.is_gqa) else 1) for u in kinds}
    available = {u: unit_count(layout, u, mode) - step[u] for u in kinds}  # one step always stays
    block = {u: cost[u] * unit_count(layout, u, mode) for u in kinds}
    share = {u: target * block[u] / sum(block.values()) for u in kinds}
    counts: dict[str, int] = {}
    spill = 0.0
    for u in sorted(kinds, key=lambda k: k != "heads"):  # heads first: their steps are coarse
        want = share[u] + spill
        steps = min(round(want / (cost[u] * step[u])), available[u] // step[u])
        counts[u] = max(steps, 0) * step[u]
        spill = want - counts[u] * cost[u]
    if len(kinds) == 2 and spill > 0 and counts.get("heads", 0) < available.get("heads", 0):
        # The channels could not take their share: give the rest back to the heads.
        extra = min(round(spill / (cost["heads"] * step["heads"])),
                    (available["heads"] - counts["heads"]) // step["heads"])
        counts["heads"] += max(extra, 0) * step["heads"]
    return counts


def choose_removed(layout: LayerLayout, scores: torch.Tensor, unit_kind: str, count: int, mode: str) -> list[int]:
    """The `count` lowest-scored units; in GQA query mode the same number from every group (count / groups)."""
    if count <= 0:
        return []
    if unit_kind == "heads" and mode == "query" and layout.is_gqa:
        per_group = count // layout.kv_heads
        removed = []
        for g in range(layout.kv_heads):
            heads = torch.arange(g * layout.group_size, (g + 1) * layout.group_size)
            order = torch.argsort(scores[heads], stable=True)
            removed.extend(int(heads[i]) for i in order[:per_group])
        return sorted(removed)
    return sorted(int(i) for i in torch.argsort(scores, stable=True)[:count])


def layers_to_remove(influence: list[float], layer_params: list[int], target: float) -> list[int]:
    """Lowest block-influence layers, as many as bring the removed parameters closest to `target`; at least one
    layer stays."""
    order = sorted(range(len(influence)), key=lambda i: (influence[i], i))
    best, removed, total, best_gap = [], [], 0, abs(target)
    for index in order[:-1]:
        removed.append(index)
        total += layer_params[index]
        if abs(target - total) < best_gap:
            best, best_gap = list(removed), abs(target - total)
    return sorted(best)


# ------------------------------------------------------------------------------------------ the call

def _copy_without_layers(model: torch.nn.Module, layers: torch.nn.ModuleList) -> torch.nn.Module:
    """A deep copy of `model` whose decoder layer list holds the original `layers` (the caller copies the ones it
    keeps, one at a time): everything else (embeddings, norm, head, config) is copied."""
    memo = {id(layer): layer for layer in layers}  # deepcopy returns memo entries as they are
    return copy.deepcopy(model, memo)


def prune_structured(loaded: LoadedModel, calib_ids: Optional[torch.Tensor], config: StructuredConfig,
                     progress: Optional[ProgressFn] = None, statistics: Optional[UnitStatistics] = None,
                     batch_size: int = 8) -> StructuredResult:
    """Remove structured units from a copy of `loaded` (see the module docstring); `loaded` is not modified.

    calib_ids: calibration windows (n, seqlen), needed unless `statistics` is given or the setting needs no
    data (magnitude score, no compensation, no layers). statistics: `collect_unit_statistics` of this model
    and calibration, to reuse across settings.
    """
    config.validate()
    progress = progress or no_progress
    start = time.perf_counter()
    layout = layout_for(loaded)
    mode = config.head_mode
    needs_data = config.score != "magnitude" or config.compensate or "layers" in config.units
    seconds = {"statistics": 0.0}
    if statistics is None and needs_data:
        if calib_ids is None:
            raise ConfigError("This structured setting needs calibration data; choose a calibration corpus "
                              "(or the magnitude score without compensation).")
        statistics = collect_unit_statistics(loaded, calib_ids, batch_size, sub_progress(progress, 0.0, 0.6))
        seconds["statistics"] = statistics.seconds
    dense_layers = loaded.adapter.decoder_layers(loaded.model)
    if statistics is not None and (len(statistics.consumers) != len(dense_layers) or
                                   statistics.columns(0, layout.mlp_consumer) != layout.intermediate):
        raise ConfigError("The structured statistics given were collected on another model (their layers or "
                          "widths differ); collect them on this model with collect_unit_statistics.")
    params_before = decoder_parameters(loaded), model_parameters(loaded)
    per_layer_params = [layer_parameters(layer) for layer in dense_layers]
    ratios = layer_ratios(loaded, config)

    # Choose the removals on the dense (unchanged) model.
    clock = time.perf_counter()
    removals: dict[int, dict[str, list[int]]] = {}
    kept_layers = list(range(len(dense_layers)))
    if "layers" in config.units:
        share = config.layer_share if config.mixed else 1.0
        target = share * float(config.ratio) * sum(per_layer_params)
        dropped = layers_to_remove(statistics.block_influence, per_layer_params, target)
        kept_layers = [i for i in kept_layers if i not in dropped]
        if config.mixed:  # the kept layers give the rest, each the same fraction of its own parameters
            left = float(config.ratio) * sum(per_layer_params) - sum(per_layer_params[i] for i in dropped)
            width_ratio = max(left, 0.0) / sum(per_layer_params[i] for i in kept_layers)
            ratios = [width_ratio] * len(dense_layers)
    if config.width_units:
        for index in kept_layers:
            layer = dense_layers[index]
            linears = loaded.adapter.layer_linears(layer)
            counts = removal_counts(layout, linears, per_layer_params[index], ratios[index], config.units, mode)
            removals[index] = {}
            layer_stats = statistics.consumers[index] if statistics is not None and any(counts.values()) else None
            for unit_kind, count in counts.items():
                if count == 0:
                    removals[index][unit_kind] = []
                    continue
                stats = layer_stats[consumer_kind(layout, unit_kind)] if layer_stats else None
                scores = unit_scores(layout, linears, unit_kind, config.score, stats, mode,
                                     config.score_damping)
                removals[index][unit_kind] = choose_removed(layout, scores, unit_kind, count, mode)
            progress(0.6 + 0.2 * (index + 1) / len(dense_layers), f"scored layer {index + 1}/{len(dense_layers)}")
    seconds["scoring"] = time.perf_counter() - clock

    # Slice a copy, built one layer at a time (the dense model plus the smaller copy plus one dense layer, not
    # two dense models); compensation reads the dense weights of the layer's copy before its consumer is sliced.
    pruned = LoadedModel(_copy_without_layers(loaded.model, dense_layers), loaded.tokenizer, loaded.source,
                         f"{loaded.name} (structured)", loaded.adapter)
    clock = time.perf_counter()
    refit_seconds = 0.0
    compensation_report: dict[int, dict[str, dict]] = {}
    copied_layers = pruned.adapter.decoder_layers(pruned.model)
    for index in kept_layers:  # dropped layers stay the dense objects until remove_layers takes them out
        copied_layers[index] = copy.deepcopy(dense_layers[index])
        layer = copied_layers[index]
        layer_stats = statistics.consumers[index] if config.compensate and any(removals.get(index, {}).values()) \
            else None
        for unit_kind, removed in removals.get(index, {}).items():
            if not removed:
                continue
            new_weight = new_bias = None
            if config.compensate:
                refit_clock = time.perf_counter()
                kind = consumer_kind(layout, unit_kind)
                module = pruned.adapter.layer_linears(layer)[kind]
                gone = {c for u in removed for c in consumer_columns(layout, unit_kind, u, mode)}
                keep = [c for c in range(weight_matrix(module).shape[1]) if c not in gone]
                bias = module.bias.data if getattr(module, "bias", None) is not None else None
                refit = compensation.refit(weight_matrix(module), bias, keep, layer_stats[kind], config.damping)
                new_weight, new_bias = refit.weight, refit.bias
                compensation_report.setdefault(index, {})[kind] = {
                    "alpha": refit.alpha, "cv_error": refit.cv_error, "cv_error_removal": refit.cv_error_removal}
                refit_seconds += time.perf_counter() - refit_clock
            remove_units(layout, pruned.adapter, layer, unit_kind, removed, mode, new_weight, new_bias)
        progress(0.8 + 0.2 * (index + 1) / len(dense_layers), f"sliced layer {index + 1}/{len(dense_layers)}")
    remove_layers(pruned, kept_layers)
    if any(a is b for a in pruned.adapter.decoder_layers(pruned.model) for b in dense_layers):
        raise RuntimeError("structured pruning left a dense layer in its copy")  # the cached model must not change
    seconds["compensation"] = refit_seconds
    seconds["slicing"] = time.perf_counter() - clock - refit_seconds

    widths = model_widths(pruned, layout)
    loadable, note = loadable_with_transformers(layout, widths)
    if loadable and widths:  # one config describes every layer: let the in-memory config say so too
        for key, value in width_fields(layout, widths[0]).items():
            setattr(pruned.model.config, key, value)
    params = ParameterCounts(params_before[0], decoder_parameters(pruned), params_before[1], model_parameters(pruned))
    kept = {}
    for index in kept_layers:
        entry = {}
        for unit_kind in ("heads", "channels"):
            total = unit_count(layout, unit_kind, mode)
            removed = set(removals.get(index, {}).get(unit_kind, []))
            entry[unit_kind] = [u for u in range(total) if u not in removed]
        kept[index] = entry
    seconds["total"] = time.perf_counter() - start
    progress(1.0, "structured pruning done")
    return StructuredResult(config, pruned, layout, kept, kept_layers, [w.to_dict() for w in widths], params,
                            params.decoder_removed_fraction, compensation_report, loadable, note, seconds)

"""Prune a model with a registered method: one call, masks returned, the model left as it was.

`prune_model` walks the decoder layers once (`walk.walk_layers`), collecting exactly the statistics the
method declares, prunes every targeted linear with the method's pure function, and returns a `PruneResult`
(keep-masks, SparseGPT's updated weights, measured sparsity). The model's weights are restored on exit.

`collect_statistics` runs the same walk without pruning (``dense`` propagation): its result can be reused
for any method and sparsity via `prune_with_statistics`, which needs no forward pass at all.

Both take an optional `devices.placement.LayerOffload`: each layer is then walked, and pruned, on the compute
device (a GPU) while the model stays home (the CPU); masks, weights and statistics are sent home layer by
layer, so the GPU holds one layer's worth of them and the results are where they would be without offload.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Mapping, Optional, Sequence

import torch

from pruning_core.plan import SparsityPlan, module_sizes, plan_for
from pruning_core.errors import ConfigError
from pruning_core.devices.placement import LayerOffload
from pruning_core.masks import (
    applied_masks,
    check_sparsity,
    keep_mask_from_ranks,
    parse_structure,
    score_ranks,
    sparsity_when_applied,
)
from pruning_core.methods import MethodOptions, covers, get_method
from pruning_core.devices.allocator import release_free_memory
from pruning_core.packed_masks import PackedMasks
from pruning_core.models import LoadedModel, to_native, weight_matrix
from pruning_core.progress import ProgressFn, no_progress
from pruning_core.stats import InputStatistics, LayerStatistics
from pruning_core.walk import PROPAGATIONS, LayerInputs, capture_layer_inputs, check_calib_dtype, walk_layers

#: Compute dtype of the calibration forwards when a config names none, per (propagation, method). Measured on
#: the embedded model (docs/runs/peer-speed.json: 64 x 512 wiki calibration, 16 evaluation windows, 2-core EPYC
#: with AVX512-BF16), bf16 autocast in pruned propagation made Wanda 50 % 1.5x faster and moved its perplexity
#: by -0.53 % (41.72 against 41.94), within the ~0.5 % fidelity tolerance, so it is Wanda's default; for
#: SparseGPT 50 % it was 1.34x faster but moved perplexity by +0.90 % (36.50 against 36.17), beyond it, so
#: SparseGPT stays fp32 unless asked. SparseGPT's perplexity is chaotic in fp32 rounding itself (a different walk
#: batch size moves it by 0.64 % on average over three calibration seeds, docs/runs/calib-dtype-fidelity.json);
#: bf16 moved it by 0.66 % on average, but by +0.57 % in the mean, a bias three seeds cannot rule out, so the
#: default stays fp32. Dense propagation stays fp32, so a what-if in dense mode matches the
#: sweep's dense statistics (collected in fp32 and cached).
DEFAULT_CALIB_DTYPE = {("pruned", "wanda"): "bfloat16"}


def default_calib_dtype(propagation: str, method: str) -> str:
    """The calibration compute dtype a config gets when it names none (see `DEFAULT_CALIB_DTYPE`)."""
    return DEFAULT_CALIB_DTYPE.get((propagation, method), "float32")


@dataclass(frozen=True)
class PruneConfig:
    """One pruning setting.

    sparsity: target fraction of zeros in [0, 1) for unstructured pruning (ignored for N:M).
    layer_sparsity: optional per-decoder-layer overrides {layer index: sparsity}.
    targets: module kinds to prune (e.g. ("q", "k")); None = every prunable linear.
    plan: optional `SparsityPlan` (sparsity per layer x module kind); when given it decides every module's
    sparsity and `sparsity` records the plan's global sparsity by parameters (set by `with_plan`).
    calib_dtype: compute dtype of the calibration forwards, "float32" or "bfloat16" (autocast; statistics
    are accumulated in fp32 either way); None = `default_calib_dtype` of the propagation and method, resolved when the
    config is built so `to_dict` (and every result that records it) names the dtype actually used.

    The method and structure are resolved once, when the config is built (an unknown name raises ConfigError
    then): `method_spec` is the registered `Method`, `structure_spec` the parsed `Structure`, and `method`
    holds the registry's spelling of the name.
    """

    method: str = "wanda"
    structure: str = "unstructured"
    sparsity: float = 0.5
    propagation: str = "pruned"
    layer_sparsity: Optional[dict[int, float]] = None
    targets: Optional[tuple[str, ...]] = None
    blocksize: int = 128
    percdamp: float = 0.01
    calib_dtype: Optional[str] = None
    plan: Optional[SparsityPlan] = None

    def __post_init__(self) -> None:
        # Frozen: set the resolved objects (not fields, so to_dict and equality see only the settings).
        method = get_method(self.method)
        object.__setattr__(self, "method", method.name)
        object.__setattr__(self, "method_spec", method)
        object.__setattr__(self, "structure_spec", parse_structure(self.structure))
        if self.calib_dtype is None:
            object.__setattr__(self, "calib_dtype", default_calib_dtype(self.propagation, self.method))

    def validate(self) -> "PruneConfig":
        """Check every field; raises ConfigError naming the bad value and the fix."""
        if not self.structure_spec.is_nm:
            check_sparsity(self.sparsity)
        for layer, value in (self.layer_sparsity or {}).items():
            check_sparsity(value)
        if self.propagation not in PROPAGATIONS:
            raise ConfigError(f"Propagation '{self.propagation}' is unknown; use 'pruned' or 'dense'.")
        if self.blocksize < 1 or not 0 <= self.percdamp < 1:
            raise ConfigError("blocksize must be >= 1 and percdamp in [0, 1).")
        check_calib_dtype(self.calib_dtype)
        if self.plan is not None and self.layer_sparsity:
            raise ConfigError("Give either a sparsity plan or per-layer sparsities, not both; edit the plan instead.")
        return self

    def module_sparsity(self, layer: int, kind: str) -> float:
        """The sparsity this setting prunes `kind` of decoder layer `layer` to (plan, per-layer override, or
        the uniform value); for N:M structures 0 means "leave dense" and anything else means N:M."""
        if self.plan is not None:
            return self.plan.sparsity(layer, kind)
        return (self.layer_sparsity or {}).get(layer, self.sparsity)

    def with_plan(self, loaded: LoadedModel, plan: SparsityPlan) -> "PruneConfig":
        """This setting with `plan` (checked against `loaded`) and `sparsity` set to the plan's global sparsity."""
        plan = plan_for(loaded, plan)
        applied = plan.for_structure(self.structure_spec.sparsity) if self.structure_spec.is_nm else plan
        return replace(self, plan=plan, layer_sparsity=None,
                       sparsity=round(applied.global_sparsity(module_sizes(loaded)), 6))

    @property
    def effective_sparsity(self) -> float:
        """The target sparsity: the N:M-implied one for N:M structures."""
        structure = self.structure_spec
        return structure.sparsity if structure.is_nm else float(self.sparsity)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["plan"] = self.plan.to_dict() if self.plan is not None else None
        return out


@dataclass
class PruneResult:
    """What pruning produced. Masks and weights are in the modules' native layout, keyed by qualified name.

    masks: True = kept; a `PackedMasks` (held 8 weights per byte, each unpacked to a bool tensor when read) from
    this module's functions, any name -> tensor mapping from elsewhere. weights: the method's updated weights
    (zeros already applied), or None when the method only masks. sparsity: measured zeros / elements over the
    pruned linears after applying.
    """

    config: PruneConfig
    masks: Mapping[str, torch.Tensor]
    weights: Optional[dict[str, torch.Tensor]]
    sparsity: float
    per_module_sparsity: dict[str, float]
    seconds: float
    extra: dict = field(default_factory=dict)

    def applied(self, loaded: LoadedModel):
        """Context manager: the model with this result applied, restored on exit."""
        return applied_masks(loaded.model, self.masks, self.weights)


def _targets(loaded: LoadedModel, config: PruneConfig) -> list[str]:
    kinds = loaded.adapter.module_kinds
    if config.targets is None:
        return kinds
    unknown = [t for t in config.targets if t not in kinds]
    if unknown:
        raise ConfigError(f"Module kinds {unknown} are not in this model; its kinds are {', '.join(kinds)}.")
    return list(config.targets)


def _prune_layer(loaded: LoadedModel, index: int, layer, stats_by_kind: dict[str, InputStatistics],
                 config: PruneConfig, masks: dict, weights: Optional[dict], write: bool,
                 ranks: Optional[dict] = None) -> None:
    """Prune the targeted linears of one layer, recording masks (and weights); optionally write them in.

    ranks: a dict kept by the caller across settings pruned from the same dense statistics; for a scoring
    method (magnitude, Wanda) in unstructured mode, each matrix's score ranks are computed once into it and
    every later sparsity is a comparison (same masks as ranking afresh).
    """
    method, structure = config.method_spec, config.structure_spec
    options = MethodOptions(config.blocksize, config.percdamp)
    linears = loaded.adapter.layer_linears(layer)
    kinds = _targets(loaded, config)
    found: dict[str, tuple[torch.Tensor, Optional[torch.Tensor]]] = {}  # kind -> (keep (out, in), new W or None)
    to_prune: list[str] = []
    for kind in kinds:
        matrix = weight_matrix(linears[kind])  # (out, in) view
        key = f"{method.name}:{loaded.adapter.qualified_name(index, kind)}"
        sparsity = config.module_sparsity(index, kind)
        if structure.is_nm and sparsity == 0:  # a plan may leave chosen modules dense beside N:M ones
            found[kind] = torch.ones_like(matrix, dtype=torch.bool), None
        elif ranks is not None and key in ranks and not structure.is_nm:  # ranked before: no copy, no scoring
            found[kind] = keep_mask_from_ranks(ranks[key], sparsity, method.per_row), None
        elif ranks is not None and method.scores is not None and not structure.is_nm:
            source = matrix.to(torch.float32).contiguous()  # Conv1D views are transposed; methods need rows
            ranks[key] = score_ranks(method.scores(source, stats_by_kind.get(kind)), method.per_row)
            found[kind] = keep_mask_from_ranks(ranks[key], sparsity, method.per_row), None
        else:
            to_prune.append(kind)
    # Linears that read the same input share one statistics object; a method that can prunes them together.
    groups: dict[int, list[str]] = {}
    for kind in to_prune:
        groups.setdefault(id(stats_by_kind.get(kind)) if method.prune_group else len(groups), []).append(kind)
    for group in groups.values():
        sources = [weight_matrix(linears[kind]).to(torch.float32).contiguous() for kind in group]
        sparsities = [config.module_sparsity(index, kind) for kind in group]
        if len(group) > 1:
            outcomes = method.prune_group(sources, stats_by_kind.get(group[0]), sparsities, structure, options)
        else:
            outcomes = [method.prune(sources[0], stats_by_kind.get(group[0]), sparsities[0], structure, options)]
        found.update(zip(group, outcomes))
    for kind in kinds:
        module = linears[kind]
        matrix = weight_matrix(module)
        name = loaded.adapter.qualified_name(index, kind)
        keep, new_weight = found[kind]
        masks[name] = to_native(module, keep)
        if new_weight is not None and weights is not None:
            weights[name] = to_native(module, new_weight.to(module.weight.dtype))
        if write:
            with torch.no_grad():
                if new_weight is not None:
                    matrix.copy_(new_weight.to(matrix.dtype))
                matrix.mul_(keep.to(matrix.dtype))


#: What each propagation means, in the words pages and reports use to say which one produced a number: the
#: same method and sparsity give slightly different masks (and perplexities) under the two.
PROPAGATION_NOTES = {
    "pruned": "each layer's statistics are measured on the outputs of the already-pruned earlier layers "
              "(pruned propagation, as the Wanda and SparseGPT papers do)",
    "dense": "every layer's statistics are measured once on the dense model and reused for every setting "
             "(dense propagation, the fast sweep mode)",
}


def propagation_note(propagation: str) -> str:
    """One clause saying how the calibration statistics behind a mask were measured."""
    if propagation not in PROPAGATION_NOTES:
        raise ConfigError(f"Propagation '{propagation}' is unknown; use 'pruned' or 'dense'.")
    return PROPAGATION_NOTES[propagation]


def result_from_masks(loaded: LoadedModel, config: PruneConfig, masks: dict[str, torch.Tensor],
                      weights: Optional[dict[str, torch.Tensor]] = None, seconds: float = 0.0) -> PruneResult:
    """A `PruneResult` for keep-masks computed earlier (e.g. a stored What-if mask), checked against `loaded`.

    Every name must be a linear of this model with the mask's shape; the sparsity is measured afresh.
    """
    config.validate()
    if not masks:
        raise ConfigError("The stored mask is empty; run the What-if again.")
    for name, mask in masks.items():
        try:
            module = loaded.model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"The stored mask names '{name}', which this model does not have; it was made "
                              "for another model. Choose a mask made for this model.") from None
        if tuple(mask.shape) != tuple(module.weight.shape):
            raise ConfigError(f"The stored mask for '{name}' has shape {tuple(mask.shape)} but the weight has "
                              f"{tuple(module.weight.shape)}; it was made for another model.")
    bool_masks = PackedMasks((name, mask.to(torch.bool)) for name, mask in masks.items())  # one unpacked at a time
    result = _finish(loaded, config, bool_masks, weights, time.perf_counter())
    result.seconds = seconds
    return result


def _finish(loaded: LoadedModel, config: PruneConfig, masks, weights, start: float) -> PruneResult:
    measured = sparsity_when_applied(loaded.model, masks, weights)
    return PruneResult(config, masks, weights, measured["overall"], measured["per_module"],
                       time.perf_counter() - start)


def prune_model(loaded: LoadedModel, calibration_ids: Optional[torch.Tensor], config: PruneConfig,
                batch_size: int = 8, progress: Optional[ProgressFn] = None,
                inputs: Optional[LayerInputs] = None, offload: Optional[LayerOffload] = None) -> PruneResult:
    """Prune with `config` using calibration windows (n, seqlen); the model is restored on return.

    In ``pruned`` propagation each layer's statistics come from the already-pruned earlier layers (the
    papers' protocol). In ``dense`` propagation statistics of the dense model are used (see
    `collect_statistics` to reuse them across settings). `inputs` may pass already-captured layer-0 inputs.
    offload: walk and prune each layer on the offload's compute device (see the module docstring); magnitude
    (no walk) and the pruning from dense statistics run where the model lives.
    """
    config.validate()
    progress = progress or no_progress
    start = time.perf_counter()
    method = config.method_spec
    if config.propagation == "dense" and method.needs != "none":
        statistics = collect_statistics(loaded, calibration_ids, method.needs, batch_size, progress, inputs,
                                        dtype=config.calib_dtype, offload=offload)
        return prune_with_statistics(loaded, statistics, config, start=start)
    masks = PackedMasks()  # filled layer by layer: one layer's masks are unpacked at a time
    weights: Optional[dict[str, torch.Tensor]] = {} if method.updates_weights else None
    if method.needs == "none":  # magnitude: no data, no walk
        for index, layer in enumerate(loaded.adapter.decoder_layers(loaded.model)):
            _prune_layer(loaded, index, layer, {}, config, masks, weights, write=False)
        return _finish(loaded, config, masks, weights, start)
    if inputs is None:
        if calibration_ids is None:
            raise ConfigError(f"Method '{config.method}' needs calibration data; choose a calibration corpus.")
        progress(0.0, "capturing layer-0 inputs")
        inputs = capture_layer_inputs(loaded, calibration_ids, batch_size, offload=offload)

    def on_layer(index: int, layer, stats: LayerStatistics) -> bool:
        _prune_layer(loaded, index, layer, stats.by_kind, config, masks, weights, write=True)
        if offload is not None:  # results live with the model; the GPU keeps one layer's at a time
            for kind in loaded.adapter.module_kinds:
                name = loaded.adapter.qualified_name(index, kind)
                if name in masks:  # the packed bits travel: 1/8 of the mask's bytes
                    masks.move_packed(name, lambda bits: offload.to_home(bits, "results"))
                if weights is not None and name in weights:
                    weights[name] = offload.to_home(weights[name], "results")
        return True

    # The walk writes each layer's pruned weights in (the next layers' inputs must see them) and puts the layer's
    # dense weights back once its outputs are recomputed: one layer's copy at a time, not the whole model's.
    walk_layers(loaded, inputs, on_layer, need=method.needs, propagation="pruned", progress=progress,
                dtype=config.calib_dtype, always_changes=True, offload=offload, restore_each_layer=True)
    return _finish(loaded, config, masks, weights, start)


@dataclass
class Statistics:
    """Dense-model input statistics for every prunable linear: qualified name -> InputStatistics."""

    need: str
    by_module: dict[str, InputStatistics]
    seconds: float = 0.0

    def covers(self, need: str) -> bool:
        return covers(self.need, need)


def collect_statistics(loaded: LoadedModel, calibration_ids: Optional[torch.Tensor], need: str,
                       batch_size: int = 8, progress: Optional[ProgressFn] = None,
                       inputs: Optional[LayerInputs] = None, dtype: str = "float32",
                       offload: Optional[LayerOffload] = None) -> Statistics:
    """One dense walk collecting `need` statistics ("act_sq" or "hessian") for every prunable linear.

    dtype: compute dtype of the calibration forwards ("float32" or "bfloat16"); statistics stay fp32.
    offload: walk each layer on the compute device; its statistics are sent home after the layer.
    """
    progress = progress or no_progress
    start = time.perf_counter()
    if inputs is None:
        if calibration_ids is None:
            raise ConfigError("Statistics need calibration data; choose a calibration corpus.")
        inputs = capture_layer_inputs(loaded, calibration_ids, batch_size, offload=offload)
    by_module: dict[str, InputStatistics] = {}

    def on_layer(index: int, layer, stats: LayerStatistics) -> bool:
        for kind, value in stats.by_kind.items():
            by_module[loaded.adapter.qualified_name(index, kind)] = value
            if offload is not None:  # a whole model's Hessians would not fit on the GPU
                value.to(offload.home)  # in place; linears sharing an input share this object
        stats.by_kind = {}  # keep them alive past the walk's free()
        return False

    walk_layers(loaded, inputs, on_layer, need=need, propagation="dense", progress=progress, dtype=dtype,
                offload=offload)
    return Statistics(need, by_module, time.perf_counter() - start)


def prune_with_statistics(loaded: LoadedModel, statistics: Optional[Statistics], config: PruneConfig,
                          start: Optional[float] = None, ranks: Optional[dict] = None) -> PruneResult:
    """Prune every targeted linear from precomputed dense statistics (no forward pass).

    statistics may be None for a method that needs none (magnitude). ranks: see `_prune_layer`; pass the
    same dict for every setting of a sweep over one model and statistics.
    """
    config.validate()
    start = time.perf_counter() if start is None else start
    method = config.method_spec
    if method.needs != "none" and (statistics is None or not statistics.covers(method.needs)):
        have = f"'{statistics.need}'" if statistics is not None else "no"
        raise ConfigError(f"Method '{method.name}' needs '{method.needs}' statistics but {have} statistics "
                          "were collected.")
    masks = PackedMasks()  # filled layer by layer: one layer's masks are unpacked at a time
    weights: Optional[dict[str, torch.Tensor]] = {} if method.updates_weights else None
    by_module = statistics.by_module if statistics is not None else {}
    for index, layer in enumerate(loaded.adapter.decoder_layers(loaded.model)):
        stats = {kind: by_module[loaded.adapter.qualified_name(index, kind)]
                 for kind in loaded.adapter.module_kinds if loaded.adapter.qualified_name(index, kind) in by_module}
        _prune_layer(loaded, index, layer, stats, config, masks, weights, write=False, ranks=ranks)
        # Each layer's kept ranks or masks sit between the holes its scoring temporaries left (as in the walk).
        release_free_memory()
    return _finish(loaded, config, masks, weights, start)


def prune_settings(methods: Sequence[str], structures: Sequence[str], sparsities: Sequence[float],
                   propagation: str = "pruned") -> list[PruneConfig]:
    """The grid of settings of a sweep; an N:M structure appears once per method (its sparsity is fixed)."""
    configs = []
    for method in methods:
        for structure in structures:
            nm = parse_structure(structure)
            if nm.is_nm:
                configs.append(PruneConfig(method, structure, nm.sparsity, propagation))
            else:
                configs.extend(PruneConfig(method, "unstructured", check_sparsity(s), propagation)
                               for s in sparsities)
    for config in configs:
        config.validate()
    return configs

"""A structured-pruning run: several ratios of one setting, each pruned, evaluated, optionally timed and saved.

`run_structured(spec)` is what the CLI (`prunescope structured`), the dashboard's job (kind "structured") and
the benchmark call, so that they agree. Per ratio it prunes a copy (`prune_structured`, the dense statistics
collected once for all ratios), evaluates the copy through THE evaluation (`evaluate.evaluate_setting` with the
copy as its own model, `pruned=IN_PLACE`), measures speed against the dense model when asked
(`speed.measure_speed`, stored by both fingerprints and the machine), and with `save_dir` writes the smaller
Hugging Face folder, reloads it and evaluates the reloaded model again (its perplexity must agree).

How the ratio is spread over the layers is the spec's `allocation` (an allocator of
`allocation.allocators`): "uniform" gives every layer the ratio itself; any other allocator makes a
`SparsityPlan` per ratio for that global target (OWL from the dense input statistics, cached in the store;
"sensitivity" from a stored sensitivity map, `budget.load_sensitivity`) and layer l loses the plan's sparsity of
layer l by parameters (`StructuredConfig(plan=...)`). Each point records its allocation, the plan (in its
config) and the measured fraction each layer lost.

Each finished point is stored under a key of everything that determines it, so a cancelled job resumes without
pruning again (a point that must be saved or timed, and was not, is recomputed).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional, Union

from pruning_core import claims, evaluate
from pruning_core.allocation.allocators import get_allocator
from pruning_core.plan import SparsityPlan
from pruning_core.errors import ConfigError
from pruning_core.methods import get_method
from pruning_core.models import LoadedModel, load_model
from pruning_core.progress import ProgressFn, no_progress, sub_progress
from pruning_core.protocol import Protocol, calibration_ids
from pruning_core.sizes.files import saved_size
from pruning_core.sizes.records import SIZES_VERSION, structured_sizes
from pruning_core.spec import JobSpec
from pruning_core.structured.prune_structured import StructuredConfig, StructuredResult, prune_structured
from pruning_core.structured.speed import SpeedConfig, machine_facts, measure_speed
from pruning_core.structured.statistics import collect_unit_statistics
from pruning_core.structured.units import layer_parameters, layout_for

RUN_KIND = "structured"
POINT_KIND = "structured_point"


@dataclass
class StructuredSpec(JobSpec):
    """One structured run (the job spec of `run_structured_job`).

    units / score / compensate / damping / head_mode / layer_share: as `StructuredConfig`; ratios: fractions of decoder
    parameters to remove, one point each. eval_corpora: corpora to evaluate (default: the calibration corpus).
    speed: time dense and pruned (`speed.measure_speed`) with `speed_settings` (`SpeedConfig` fields).
    prompt / max_new_tokens: the sample text of each point ("" = the default prompt; 0 tokens = no text).
    model_identity: the dashboard's record of the model file, so a changed file gets a new job key.
    allocation: the allocator that spreads each ratio over the layers (`allocation.allocators.ALLOCATORS`;
        heads/channels only, layer removal picks layers by block influence). sensitivity / sensitivity_method:
        for the "sensitivity" allocator, a sensitivity JSON (`prunescope sensitivity`'s output), else the maps of
        this model pruned with `sensitivity_method` in the store (unstructured maps: the nearest measurement of
        which layers tolerate losing weights).
    A structured run removes heads, channels or layers by ratio, so it has no unstructured `Setting`; its
    `allocation` is the same word (an allocator's name) as a setting's.
    """

    WHAT = "structured"

    model: str = "embedded"
    protocol: Protocol = field(default_factory=Protocol)
    units: tuple[str, ...] = ("heads", "channels")
    ratios: tuple[float, ...] = (0.1, 0.2, 0.3)
    score: str = "obs"
    compensate: bool = True
    damping: Optional[float] = None
    head_mode: str = "query"
    eval_corpora: tuple[str, ...] = ()
    speed: bool = False
    speed_settings: dict = field(default_factory=dict)
    prompt: str = ""
    max_new_tokens: int = 40
    model_identity: Optional[dict] = None
    allocation: str = "uniform"
    sensitivity: Optional[str] = None
    sensitivity_method: str = "wanda"
    layer_share: float = 0.5

    def __post_init__(self) -> None:
        self.units = (self.units,) if isinstance(self.units, str) else tuple(self.units)
        self.ratios = tuple(float(r) for r in self.ratios)
        self.eval_corpora = tuple(self.eval_corpora)

    @property
    def corpora(self) -> tuple[str, ...]:
        return tuple(self.eval_corpora) or (self.protocol.calib,)

    def config(self, ratio: float, plan: Optional[SparsityPlan] = None) -> StructuredConfig:
        """The setting of one point; plan: the allocation's plan for this ratio (None = uniform)."""
        return StructuredConfig(units=self.units, ratio=float(ratio), score=self.score, compensate=self.compensate,
                                damping=self.damping, head_mode=self.head_mode, plan=plan,
                                layer_share=float(self.layer_share)).validate()

    def speed_config(self) -> SpeedConfig:
        unknown = sorted(set(self.speed_settings) - {f.name for f in fields(SpeedConfig)})
        if unknown:
            raise ConfigError(f"Unknown speed settings {unknown}; known: "
                              f"{', '.join(f.name for f in fields(SpeedConfig))}.")
        return SpeedConfig(**self.speed_settings).validate()

    def validate(self) -> "StructuredSpec":
        """Check every setting before any work starts; raises ConfigError naming the problem."""
        self.protocol.validate()
        if not self.ratios:
            raise ConfigError("No structured ratio given; pass e.g. 0.1,0.2,0.3 (fractions of decoder parameters).")
        for ratio in self.ratios:
            self.config(ratio)
        self.allocation = get_allocator(str(self.allocation)).name
        if self.allocation != "uniform" and "layers" in self.units:
            raise ConfigError(f"Allocation '{self.allocation}' spreads heads and channels over the layers; whole "
                              "layers are chosen by block influence. Use allocation 'uniform' with layers.")
        if self.allocation == "sensitivity":
            get_method(self.sensitivity_method)
        if self.speed:
            self.speed_config()
        if int(self.max_new_tokens) < 0:
            raise ConfigError(f"max_new_tokens must be 0 or more, got {self.max_new_tokens}.")
        return self

    def _flat(self) -> dict:
        d = asdict(self)
        d["units"], d["ratios"], d["eval_corpora"] = list(self.units), list(self.ratios), list(self.eval_corpora)
        return d


def _point_key(loaded: LoadedModel, spec: StructuredSpec, ratio: float, plan: Optional[SparsityPlan] = None) -> str:
    from pruning_core.store import content_hash
    from pruning_core.provenance import library_versions

    versions = library_versions()
    return content_hash({"kind": POINT_KIND, "model": loaded.fingerprint, "protocol": spec.protocol.to_dict(),
                         "config": spec.config(ratio, plan).to_dict(), "corpora": list(spec.corpora),
                         # A timed point holds this machine's speed: another machine (or thread count) times again.
                         "speed": ({"settings": spec.speed_config().to_dict(),
                                    "machine": machine_facts(next(loaded.model.parameters()).device)}
                                   if spec.speed else None),
                         "prompt": spec.prompt, "max_new_tokens": int(spec.max_new_tokens),
                         "versions": {k: versions[k] for k in ("prunescope", "torch", "transformers")}})


def allocation_plans(loaded: LoadedModel, spec: StructuredSpec, store=None, calib_ids=None,
                     progress: Optional[ProgressFn] = None) -> dict[float, SparsityPlan]:
    """{ratio: the plan `spec.allocation` makes for that global target} ({} for "uniform": each layer gets the
    ratio itself). OWL reads the dense input statistics (`cached_statistics`, one walk, kept in `store`);
    "sensitivity" reads the maps `budget.load_sensitivity` finds, and raises ConfigError saying how to make one
    when there is none."""
    from pruning_core.allocation.allocators import AllocationInputs, make_plan
    from pruning_core.allocation.budget import load_sensitivity

    allocator = get_allocator(spec.allocation)
    if allocator.name == "uniform":
        return {}
    statistics = sensitivity = None
    if allocator.needs == "sensitivity":
        sensitivity = load_sensitivity(spec.sensitivity, store, loaded, spec.sensitivity_method)
        if sensitivity is None:
            raise ConfigError(f"Allocation 'sensitivity' needs a sensitivity map of this model ({loaded.name}) "
                              f"pruned with {spec.sensitivity_method}, over every layer at two or more sparsities, "
                              "and none is stored. Compute one on the Sensitivity page (or `prunescope sensitivity "
                              f"--method {spec.sensitivity_method} --sparsities 0.3,0.5`), give its JSON "
                              "(--sensitivity FILE), or choose allocation 'owl' or 'uniform'.")
    elif allocator.needs != "none":
        from pruning_core.statistics_cache import cached_statistics

        statistics = cached_statistics(loaded, spec.protocol, allocator.needs, store, calib_ids, progress)
    inputs = AllocationInputs(loaded, statistics=statistics, sensitivity=sensitivity)
    return {ratio: make_plan(allocator.name, inputs, ratio) for ratio in spec.ratios}


def layer_removed_fractions(dense: LoadedModel, result: StructuredResult) -> list[float]:
    """Measured fraction of each dense decoder layer's parameters removed, in dense layer order (1.0 for a
    removed layer); weighted by the dense layers' parameters, their mean is `result.ratio`."""
    before = [layer_parameters(layer) for layer in dense.adapter.decoder_layers(dense.model)]
    after = dict(zip(result.kept_layers, (layer_parameters(layer) for layer in
                                          result.loaded.adapter.decoder_layers(result.loaded.model))))
    return [1.0 - after.get(index, 0) / max(count, 1) for index, count in enumerate(before)]


def save_and_verify(dense: LoadedModel, result: StructuredResult, folder: Path, protocol: Protocol,
                    corpora, eval_ids, in_memory_ppl: dict, progress: ProgressFn) -> dict:
    """Write the smaller folder, reload it (plain `from_pretrained` when widths are uniform) and evaluate the
    reloaded model. Returns {"folder", "file_bytes" (safetensors files), "reloaded_ppl", "max_relative_gap",
    "loadable_with_transformers", "load_note"}."""
    from pruning_core.structured.slicing import load_structured, save_structured

    record = save_structured(result.loaded, result.layout, folder)
    model = load_structured(folder)
    reloaded = LoadedModel(model, dense.tokenizer, str(folder), f"{dense.name} (structured, reloaded)",
                           result.loaded.adapter)
    evaluation = evaluate.evaluate_setting(reloaded, protocol, corpora, evaluate.IN_PLACE, dense=False,
                                           eval_ids=eval_ids, progress=progress, label="reloaded")
    gaps = [abs(evaluation.pruned_ppl[c] / in_memory_ppl[c] - 1.0) for c in corpora]
    return {"folder": str(folder), "file_bytes": saved_size(folder)["weight_bytes"],
            "reloaded_ppl": evaluation.pruned_ppl, "max_relative_gap": max(gaps),
            "loadable_with_transformers": record["loadable_with_transformers"], "load_note": record["note"]}


def run_structured(spec: Union[StructuredSpec, dict], loaded: Optional[LoadedModel] = None, store=None,
                   progress: Optional[ProgressFn] = None, save_dir: Optional[Union[str, Path]] = None) -> dict:
    """Every ratio of `spec` pruned, evaluated (and timed / saved when asked); see the module docstring.

    save_dir: write each point's smaller model to save_dir/structured-<ratio> and verify it after reloading.
    Returns {"spec", "model" (dense `describe()`), "protocol", "dense_ppl": {corpus: ppl}, "points": [{"ratio"
    (asked), "measured_ratio", "parameters" (`ParameterCounts` as a dict), "model_removed_fraction", "widths",
    "ppl", "change" {corpus: pruned/dense - 1}, "compensation", "sizes", "claims" {"size", "speed"}, "speed"
    (`measure_speed`'s dict or None), "samples" [{"prompt", "dense", "pruned"}], "saved" (or None), "seconds",
    "allocation", "layer_removed" (`layer_removed_fractions`), "config" (with the allocation's plan),
    "from_store"}], "dense_widths" {"heads", "kv_heads", "channels"}, "unstructured_speed" (the honest sentence
    for unstructured zeros), "created"}.
    """
    progress = progress or no_progress
    spec = (spec if isinstance(spec, StructuredSpec) else StructuredSpec.from_dict(spec)).validate()
    protocol, corpora = spec.protocol, spec.corpora
    if loaded is None:
        loaded = load_model(spec.model, progress=sub_progress(progress, 0.0, 0.05))
    # Plans first: a missing sensitivity map is reported before any evaluation runs.
    plans = allocation_plans(loaded, spec, store, progress=sub_progress(progress, 0.05, 0.1))
    eval_ids = evaluate.evaluation_windows(loaded, protocol, corpora)
    dense = evaluate.evaluate_setting(loaded, protocol, corpora, None, eval_ids=eval_ids, store=store,
                                      progress=sub_progress(progress, 0.1 if plans else 0.05, 0.15))
    needs_data = spec.score != "magnitude" or spec.compensate or "layers" in spec.units
    calib = calibration_ids(loaded, protocol) if needs_data else None
    statistics = None
    prompt = str(spec.prompt or claims.DEFAULT_PROMPT)
    points = []
    share = 0.85 / len(spec.ratios)
    for i, ratio in enumerate(spec.ratios):
        lo = 0.15 + i * share
        step = lambda a, b, lo=lo: sub_progress(progress, lo + a * share, lo + b * share)  # noqa: E731
        plan = plans.get(ratio)
        key = _point_key(loaded, spec, ratio, plan) if store is not None else None
        stored = store.get_result(key) if key is not None else None
        # A point stored before sizes were measured on files is pruned again, so its sizes are measured.
        if stored is not None and save_dir is None and \
                (stored.get("sizes") or {}).get("sizes_version") == SIZES_VERSION:
            points.append({**stored, "saved": None, "from_store": True})
            continue
        if statistics is None and needs_data:
            statistics = collect_unit_statistics(loaded, calib, protocol.batch_size, step(0.0, 0.3))
        clock = time.perf_counter()
        result = prune_structured(loaded, calib, spec.config(ratio, plan), step(0.3, 0.4), statistics=statistics,
                                  batch_size=protocol.batch_size)
        label = f"structured {result.ratio * 100:.0f} %"
        evaluation = evaluate.evaluate_setting(result.loaded, protocol, corpora, evaluate.IN_PLACE, dense=False,
                                               eval_ids=eval_ids, progress=step(0.4, 0.6), label=label)
        speed = (measure_speed(loaded, result.loaded, spec.speed_config(), store=store, progress=step(0.6, 0.85))
                 if spec.speed else None)
        samples = (claims.compare_models(loaded, result.loaded, [prompt], int(spec.max_new_tokens))
                   if int(spec.max_new_tokens) > 0 else [])
        saved = None
        if save_dir is not None:
            folder = Path(save_dir) / f"structured-{ratio:g}"
            saved = save_and_verify(loaded, result, folder, protocol, corpora, eval_ids, evaluation.pruned_ppl,
                                    step(0.85, 1.0))
        # Measured on files: the dense model and this smaller one written as 16-bit safetensors (store-cached).
        sizes = structured_sizes(loaded, result.loaded, store, result.loadable_with_transformers, result.load_note)
        point = {"ratio": ratio, "measured_ratio": result.ratio, "parameters": asdict(result.params),
                 "model_removed_fraction": result.params.model_removed_fraction, "widths": result.widths,
                 "kept_layers": result.kept_layers, "ppl": evaluation.pruned_ppl,
                 "change": {c: evaluation.pruned_ppl[c] / dense.dense_ppl[c] - 1.0 for c in corpora},
                 "compensation": {str(k): v for k, v in result.compensation.items()},
                 "loadable_with_transformers": result.loadable_with_transformers, "load_note": result.load_note,
                 "sizes": sizes, "claims": claims.structured_claims(sizes, speed), "speed": speed,
                 "samples": samples, "saved": saved, "config": spec.config(ratio, plan).to_dict(),
                 "allocation": spec.allocation, "layer_removed": layer_removed_fractions(loaded, result),
                 "seconds": {**result.seconds, "evaluation": evaluation.seconds,
                             "total": time.perf_counter() - clock}}
        if store is not None:
            store.put_result(key, POINT_KIND, {k: v for k, v in point.items() if k != "saved"})
        points.append({**point, "from_store": False})
        progress(lo + share, f"ratio {ratio:g} done")
    progress(1.0, "structured run done")
    layout = layout_for(loaded)
    return {"spec": spec.to_dict(), "model": loaded.describe(), "protocol": protocol.to_dict(),
            "dense_ppl": dense.dense_ppl, "points": points,
            "dense_widths": {"heads": layout.heads, "kv_heads": layout.kv_heads, "channels": layout.intermediate},
            "unstructured_speed": claims.speed_sentence("unstructured"), "created": time.time()}


def run_structured_job(spec: dict, store, progress: ProgressFn) -> dict:
    """Job entry (`jobs.JOB_KINDS["structured"]`): `run_structured` with its points kept in `store`."""
    return run_structured(spec, store=store, progress=progress)

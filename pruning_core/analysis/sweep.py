"""Sweeps: a grid of methods x structures x allocations x sparsities, evaluated on several corpora.

Work is shared across the grid: the layer-0 inputs are captured once; in ``dense`` propagation the input
statistics are collected once (the most demanding statistics any method of the grid needs) and every point
only re-thresholds (magnitude and Wanda rank each matrix's scores once, then a sparsity is one comparison;
SparseGPT re-solves from the stored Hessians); in ``pruned`` propagation each point walks the model as the
papers do.

With a `store`, each finished point is stored at once under a content hash of everything that determines
it, and a later run (after a stop or a crash) reuses finished points instead of recomputing them.

An allocation (`pruning_core.allocation.allocators`) is one more axis: each unstructured (method, allocation,
sparsity) point prunes with the plan the allocator makes for that global target. Plans read the dense
statistics this sweep collects anyway (cached on disk, one dense walk at most, shared by every point) and,
for the ``sensitivity`` allocator, a sensitivity map (given, or computed once per method through the store).
A ``uniform`` point is pruned exactly as before plans existed (a plain sparsity, no plan in its key), so its
stored results stay valid. N:M structures are swept with ``uniform`` only: their sparsity is fixed by N:M,
so a plan could only leave modules dense, which no allocator here decides.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Optional

from pruning_core import evaluate
from pruning_core.allocation.allocators import ALLOCATORS, AllocationInputs, get_allocator, make_plan
from pruning_core.errors import ConfigError
from pruning_core.execution.store import content_hash
from pruning_core.masks import parse_structure
from pruning_core.methods import METHODS, strongest_need
from pruning_core.models import LoadedModel, load_model
from pruning_core.progress import ProgressFn, no_progress, sub_progress
from pruning_core.protocol import Protocol, calibration_ids, corpus_key
from pruning_core.provenance import environment, library_versions
from pruning_core.prune import PruneConfig, prune_model, prune_settings, prune_with_statistics
from pruning_core.statistics_cache import cached_statistics
from pruning_core.walk import PROPAGATIONS, capture_layer_inputs


@dataclass(frozen=True)
class SweepSpec:
    """What to sweep. N:M structures appear once per method (their sparsity is fixed by N:M).

    allocations: allocator names (`ALLOCATORS`) applied to every unstructured (method, sparsity); N:M
    structures use "uniform" only. sensitivity_sparsities: sparsities of the sensitivity map the
    "sensitivity" allocator reads when none is given to `run_sweep` (empty = the sweep's own sparsities, at
    least two: 0.5 and 0.7 are added while fewer); the map is the exact one, reused from the store.
    """

    model: str = "embedded"
    methods: tuple[str, ...] = ("magnitude", "wanda", "sparsegpt")
    structures: tuple[str, ...] = ("unstructured",)
    sparsities: tuple[float, ...] = (0.5,)
    eval_corpora: tuple[str, ...] = ("wiki",)
    propagation: str = "pruned"
    protocol: Protocol = field(default_factory=Protocol)
    allocations: tuple[str, ...] = ("uniform",)
    sensitivity_sparsities: tuple[float, ...] = ()

    def validate(self) -> "SweepSpec":
        """Check every setting before any work starts (so bad input costs nothing)."""
        if not self.methods:
            raise ConfigError(f"No method given; choose at least one of {', '.join(METHODS)}.")
        if not self.eval_corpora:
            raise ConfigError("No evaluation corpus given; choose at least one, e.g. wiki.")
        structures = [parse_structure(s) for s in self.structures]
        if any(not s.is_nm for s in structures) and not self.sparsities:
            raise ConfigError("Unstructured pruning needs at least one sparsity, e.g. 0.5.")
        if self.propagation not in PROPAGATIONS:
            raise ConfigError(f"Propagation '{self.propagation}' is unknown; use 'pruned' or 'dense'.")
        if not self.allocations:
            raise ConfigError(f"No allocation given; choose at least one of {', '.join(ALLOCATORS)}.")
        names = [get_allocator(name).name for name in self.allocations]  # unknown names raise, listing known
        if len(set(names)) != len(names):
            raise ConfigError(f"Allocation listed twice in {', '.join(self.allocations)}; give each once.")
        self.protocol.validate()
        self.settings()
        return self

    def settings(self) -> list[PruneConfig]:
        """The method x structure x sparsity settings, without allocations (see `grid`)."""
        return prune_settings(self.methods, self.structures, self.sparsities, self.propagation)

    def grid(self) -> list[tuple[PruneConfig, str]]:
        """Every point as (setting, allocation name), in run order: each setting, then its allocations."""
        allocations = [get_allocator(name).name for name in self.allocations]
        return [(config, allocation) for config in self.settings()
                for allocation in (["uniform"] if config.structure_spec.is_nm else allocations)]

    def map_sparsities(self) -> tuple[float, ...]:
        """Sparsities of the sensitivity map a "sensitivity" allocation computes when none is given."""
        chosen = sorted({float(s) for s in (self.sensitivity_sparsities or self.sparsities)})
        for extra in (0.5, 0.7):
            if len(chosen) < 2 and extra not in chosen:
                chosen = sorted(chosen + [extra])
        return tuple(chosen)

    def to_dict(self) -> dict:
        """JSON-able dict. Allocation fields at their defaults are left out, so a sweep made before
        allocations existed keeps its run key (and its stored run)."""
        out = asdict(self)
        if tuple(self.allocations) == ("uniform",):
            out.pop("allocations")
        if not self.sensitivity_sparsities:
            out.pop("sensitivity_sparsities")
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "SweepSpec":
        d = dict(d)
        d["protocol"] = Protocol(**d.get("protocol", {}))
        for key in ("methods", "structures", "sparsities", "eval_corpora", "allocations", "sensitivity_sparsities"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def point_key(fingerprint: str, calib: dict, protocol: Protocol, config: PruneConfig, evals: dict) -> dict:
    """Everything that determines a sweep point (hash it with `store.content_hash`).

    A plan enters as its digest (equal tables key one result, whichever allocator made them); a config
    without a plan (a uniform sparsity) keys exactly as before plans existed.
    """
    versions = library_versions()
    config_dict = config.to_dict()
    if config.plan is not None:
        config_dict["plan"] = config.plan.digest()
    return {
        "kind": "sweep_point",
        "model": fingerprint,
        "calib": calib,
        "protocol": protocol.to_dict(),
        "config": config_dict,
        "eval": evals,
        "versions": {k: versions[k] for k in ("prunescope", "torch", "transformers")},
    }


def _sensitivity_for(sensitivity: Optional[Mapping], method: str) -> Optional[Mapping]:
    """The sensitivity result given for `method`: one `compute_sensitivity` result ({"maps": ...}) serves
    every method; otherwise a mapping {method: result}."""
    if not sensitivity:
        return None
    if "maps" in sensitivity:
        return sensitivity
    return sensitivity.get(method)


def run_sweep(spec: SweepSpec, loaded: Optional[LoadedModel] = None, store=None,
              progress: Optional[ProgressFn] = None,
              on_point: Optional[Callable[[dict], None]] = None,
              sensitivity: Optional[Mapping] = None) -> dict:
    """Run (or resume) a sweep and return the results.json document.

    results = {"model", "dense": {"ppl": {corpus: ppl}, "eval_seconds": {...}}, "points": [...],
    "protocol", "propagation", "allocations", "env"}; each point has method, structure, allocation,
    target_sparsity (the global target asked, a fraction), sparsity (measured over the pruned linears), plan
    (`SparsityPlan.to_dict()`, None for a uniform point), plan_digest (None for uniform), ppl {corpus: ppl},
    prune_seconds, eval_seconds, cached.
    `store` (a `pruning_core.execution.store.Store`) makes points durable and resumable; `on_point` sees each point.
    sensitivity: for the "sensitivity" allocation, a `compute_sensitivity` result (or {method: result});
    without one the exact map at `spec.map_sparsities()` is computed once per method (reused from `store`).
    """
    spec.validate()
    progress = progress or no_progress
    protocol = spec.protocol
    if loaded is None:
        loaded = load_model(spec.model, progress=sub_progress(progress, 0.0, 0.02))
    # Read every corpus first: a bad corpus fails before any expensive work.
    calib_ids = calibration_ids(loaded, protocol)
    eval_ids = evaluate.evaluation_windows(loaded, protocol, spec.eval_corpora)
    calib_identity = corpus_key(protocol.calib, "calibration", protocol.calib_column)
    eval_identity = {corpus: corpus_key(corpus, "evaluation")["sha256"] for corpus in spec.eval_corpora}

    settings = spec.settings()
    grid = spec.grid()
    steps = len(grid) + 1
    results = {
        "model": loaded.describe(),
        "dense": {"ppl": {}, "eval_seconds": {}},
        "points": [],
        "protocol": evaluate.protocol_record(protocol, eval_ids, propagation=spec.propagation),
        "allocations": [get_allocator(name).name for name in spec.allocations],
        "env": environment(),
    }
    run_key = None
    if store is not None:
        run_key = content_hash({"sweep": spec.to_dict(), "model": loaded.fingerprint})
        store.put_run(run_key, "sweep", spec.to_dict())

    # Dense reference perplexities: measured once per model and corpus, then reused from the store.
    dense_eval = evaluate.evaluate_setting(loaded, protocol, spec.eval_corpora, None, eval_ids=eval_ids,
                                           store=store, progress=sub_progress(progress, 0.02, 0.02 + 0.98 / steps))
    dense = {"ppl": dense_eval.dense_ppl, "eval_seconds": dense_eval.dense_seconds}
    if store is not None:  # this run's own copy, so a running sweep's partial results show the dense line
        store.put_result(content_hash({"sweep_dense": run_key}), "sweep_dense", dense, run_key=run_key)
    results["dense"] = dense

    inputs = None
    statistics = None
    allocators = {allocation: get_allocator(allocation) for _, allocation in grid}
    # One set of dense statistics serves dense-propagation pruning and every plan (hessian covers act_sq).
    stats_need = strongest_need([a.needs for a in allocators.values() if a.needs not in ("none", "sensitivity")]
                                + ([c.method_spec.needs for c in settings] if spec.propagation == "dense" else []))

    def dense_statistics(step_progress: ProgressFn):
        nonlocal statistics
        if statistics is None or not statistics.covers(stats_need):
            statistics = cached_statistics(loaded, protocol, stats_need, store, calib_ids,
                                           sub_progress(step_progress, 0.0, 0.9))
        return statistics

    maps: dict = {}  # method -> sensitivity result read by the "sensitivity" allocator
    plans: dict = {}  # (allocation, method, target) -> SparsityPlan

    def plan_of(config: PruneConfig, allocation: str, step_progress: ProgressFn):
        allocator = allocators[allocation]
        key = (allocation, config.method if allocator.needs == "sensitivity" else None, config.sparsity)
        if key not in plans:
            stats = dense_statistics(step_progress) if allocator.needs not in ("none", "sensitivity") else statistics
            sens = None
            if allocator.needs == "sensitivity":
                if config.method not in maps:
                    maps[config.method] = _sensitivity_for(sensitivity, config.method)
                if maps[config.method] is None:
                    from pruning_core.analysis.sensitivity import compute_sensitivity

                    step_progress(0.0, f"sensitivity map of {config.method} for the plan")
                    maps[config.method] = compute_sensitivity(loaded, protocol, config.method, spec.map_sparsities(),
                                                              metrics=("exact",), store=store,
                                                              progress=sub_progress(step_progress, 0.0, 0.9))
                sens = maps[config.method]
            plans[key] = make_plan(allocation, AllocationInputs(loaded, statistics=stats, sensitivity=sens),
                                   config.sparsity)
        return plans[key]

    ranks: dict = {}  # score ranks per (method, matrix): each later sparsity of a scoring method re-thresholds
    for index, (base, allocation) in enumerate(grid):
        lo = 0.02 + 0.98 * (index + 1) / steps
        hi = 0.02 + 0.98 * (index + 2) / steps
        label = f"{base.method} {base.structure} {base.effective_sparsity:.0%}"
        if allocation != "uniform":
            label += f" {allocation}"
        step_progress = sub_progress(progress, lo, lo + (hi - lo) * 0.6)
        # A uniform point keeps its plain sparsity: same masks, same key as before plans existed.
        config = base if allocation == "uniform" else base.with_plan(loaded, plan_of(base, allocation, step_progress))
        identity = {"allocation": allocation,
                    "plan": config.plan.to_dict() if config.plan is not None else None,
                    "plan_digest": config.plan.digest() if config.plan is not None else None}
        key = None
        if store is not None:
            key = content_hash(point_key(loaded.fingerprint, calib_identity, protocol, config, eval_identity))
            cached = store.get_result(key)
            if cached is not None:
                # The key holds the plan's table, not its maker: name this run's allocator.
                point = {**cached, **identity, "target_sparsity": base.effective_sparsity, "cached": True}
                results["points"].append(point)
                if on_point:
                    on_point(point)
                progress(hi, f"{label}: from the store")
                continue
        step_progress(0.0, f"{label}: pruning")
        method = config.method_spec
        # Ranking costs ~3 direct prunes, so it pays only when the method has several unstructured points.
        ranks_for = ranks if sum(1 for c, _ in grid if c.method == config.method
                                 and not c.structure_spec.is_nm) > 1 else None
        if method.needs == "none":  # magnitude: no data, so both propagations are the same; rank once
            pruned = prune_with_statistics(loaded, None, config, ranks=ranks_for)
        elif spec.propagation == "dense":
            pruned = prune_with_statistics(loaded, dense_statistics(step_progress), config, ranks=ranks_for)
        else:
            if inputs is None and method.needs != "none":
                inputs = capture_layer_inputs(loaded, calib_ids, protocol.batch_size)
            pruned = prune_model(loaded, calib_ids, config, protocol.batch_size,
                                 sub_progress(step_progress, 0.0, 1.0), inputs=inputs)
        point = {
            "method": config.method,
            "structure": config.structure,
            **identity,
            "target_sparsity": base.effective_sparsity,
            "sparsity": pruned.sparsity,
            "propagation": spec.propagation,
            "ppl": {},
            "prune_seconds": pruned.seconds,
            "eval_seconds": 0.0,
        }
        evaluation = evaluate.evaluate_setting(loaded, protocol, spec.eval_corpora, pruned, dense=False,
                                               eval_ids=eval_ids, label=label,
                                               progress=sub_progress(progress, lo + (hi - lo) * 0.6, hi))
        point["ppl"] = evaluation.pruned_ppl
        point["eval_seconds"] = evaluation.seconds
        if store is not None:
            store.put_result(key, "sweep_point", point, run_key=run_key)
        point["cached"] = False
        results["points"].append(point)
        if on_point:
            on_point(point)
        progress(hi, f"{label}: ppl " + ", ".join(f"{c} {v:.2f}" for c, v in point["ppl"].items()))
    return results


def run_sweep_job(spec: dict, store, progress: ProgressFn) -> dict:
    """Job entry (`jobs.JOB_KINDS["sweep"]`): `spec` is `SweepSpec.to_dict()`; points go to `store` as they
    finish, so a cancelled or killed job resumes where it stopped. Returns the results.json document."""
    return run_sweep(SweepSpec.from_dict(spec), store=store, progress=progress)

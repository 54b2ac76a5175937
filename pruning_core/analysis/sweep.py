"""Sweeps: a grid of methods x structures x allocations x sparsities, evaluated on several corpora.

Work is shared across the grid: the layer-0 inputs are captured once per worker; in ``dense`` propagation
the input statistics are collected once (the most demanding statistics any method of the grid needs) and every point
only re-thresholds (magnitude and Wanda rank each matrix's scores once, then a sparsity is one comparison;
SparseGPT re-solves from the stored Hessians); in ``pruned`` propagation each point walks the model as the
papers do.

With a `store`, each finished point is stored at once under a content hash of everything that determines
it, and a later run (after a stop or a crash) reuses finished points instead of recomputing them.

Points are independent units of work (`PointTask`, computed by a `SweepWorker`), so an executor
(`pruning_core.executors.base`) can run them here, in grid order, or on Ray workers in parallel. The
driver (`run_sweep`) keeps what must happen once: dense perplexities, statistics for plans, the plans
themselves, and every store read and write.

An allocation (`pruning_core.allocation.allocators`) is one more axis: each unstructured (method, allocation,
sparsity) point prunes with the plan the allocator makes for that global target. Plans read the dense
statistics this sweep collects anyway (cached on disk, one dense walk at most, shared by every point) and,
for the ``sensitivity`` allocator, a sensitivity map (given, or computed once per method through the store).
A ``uniform`` point is pruned exactly as before plans existed (a plain sparsity, no plan in its key), so its
stored results stay valid. N:M structures are swept with ``uniform`` only: their sparsity is fixed by N:M,
so a plan could only leave modules dense, which no allocator here decides.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Optional

import torch

from pruning_core import evaluate
from pruning_core.allocation.allocators import ALLOCATORS, AllocationInputs, get_allocator, make_plan
from pruning_core.errors import ConfigError
from pruning_core.devices.placement import device_key, offload_for, resolve_device
from pruning_core.executors.base import ExecutorConfig, WorkerRecipe, load_worker_model, make_executor
from pruning_core.store import content_hash
from pruning_core.masks import parse_structure
from pruning_core.methods import METHODS, strongest_need
from pruning_core.models import LoadedModel, load_model
from pruning_core.progress import ProgressFn, no_progress, sub_progress
from pruning_core.protocol import Protocol, calibration_ids, corpus_key
from pruning_core.spec import JobSpec
from pruning_core.provenance import environment, library_versions
from pruning_core.prune import PruneConfig, prune_model, prune_settings, prune_with_statistics
from pruning_core.statistics_cache import cached_statistics
from pruning_core.walk import PROPAGATIONS, capture_layer_inputs

#: While a grid's points are prepared (plans, keys, stored results), progress is reported every this many points.
PREPARE_REPORT_EVERY = 200


@dataclass(frozen=True)
class SweepSpec(JobSpec):
    """What to sweep: a grid of settings (methods x structures x sparsities x allocations, one propagation), so
    its axes are plural where a `Setting` names one value. N:M structures appear once per method (their
    sparsity is fixed by N:M).

    allocations: allocator names (`ALLOCATORS`) applied to every unstructured (method, sparsity); N:M
    structures use "uniform" only. sensitivity_sparsities: sparsities of the sensitivity map the
    "sensitivity" allocator reads when none is given to `run_sweep` (empty = the sweep's own sparsities, at
    least two: 0.5 and 0.7 are added while fewer); the map is the exact one, reused from the store.
    executor: where the points are computed (`ExecutorConfig`; in no key: it changes no number).
    """

    WHAT = "sweep"

    model: str = "embedded"
    methods: tuple[str, ...] = ("magnitude", "wanda", "sparsegpt")
    structures: tuple[str, ...] = ("unstructured",)
    sparsities: tuple[float, ...] = (0.5,)
    eval_corpora: tuple[str, ...] = ("wiki",)
    propagation: str = "pruned"
    protocol: Protocol = field(default_factory=Protocol)
    allocations: tuple[str, ...] = ("uniform",)
    sensitivity_sparsities: tuple[float, ...] = ()
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

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
        self.executor.validate()
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

    def _flat(self) -> dict:
        """JSON-able dict. Allocation fields at their defaults are left out, so a sweep made before
        allocations existed keeps its run key (and its stored run)."""
        out = asdict(self)
        out.pop("executor")
        if tuple(self.allocations) == ("uniform",):
            out.pop("allocations")
        if not self.sensitivity_sparsities:
            out.pop("sensitivity_sparsities")
        return out

    @classmethod
    def _from_flat(cls, d: dict) -> dict:
        for key in ("methods", "structures", "sparsities", "eval_corpora", "allocations", "sensitivity_sparsities"):
            if key in d:
                d[key] = tuple(d[key])
        return d


def point_key(fingerprint: str, calib: dict, protocol: Protocol, config: PruneConfig, evals: dict,
              device: Optional[str] = None) -> dict:
    """Everything that determines a sweep point (hash it with `store.content_hash`).

    A plan enters as its digest (equal tables key one result, whichever allocator made them); a config
    without a plan (a uniform sparsity) keys exactly as before plans existed. device: `devices.placement.
    device_key` of the run's offload (None or "cpu" on the CPU, whose points key as before devices existed).
    """
    versions = library_versions()
    config_dict = config.to_dict()
    if config.plan is not None:
        config_dict["plan"] = config.plan.digest()
    key = {
        "kind": "sweep_point",
        "model": fingerprint,
        "calib": calib,
        "protocol": protocol.to_dict(),
        "config": config_dict,
        "eval": evals,
        "versions": {k: versions[k] for k in ("prunescope", "torch", "transformers")},
    }
    if device is not None and device != "cpu":
        key["device"] = device
    return key


def _sensitivity_for(sensitivity: Optional[Mapping], method: str) -> Optional[Mapping]:
    """The sensitivity result given for `method`: one `compute_sensitivity` result ({"maps": ...}) serves
    every method; otherwise a mapping {method: result}."""
    if not sensitivity:
        return None
    if "maps" in sensitivity:
        return sensitivity
    return sensitivity.get(method)


@dataclass(frozen=True)
class PointTask:
    """One sweep point to compute: its setting and how to name it; the model and windows are the worker's.

    base: the grid's setting (its sparsity is the target); config: `base`, or `base` with the plan the driver
    made for it; use_ranks: rank each matrix's scores once and re-threshold for later sparsities (speed
    only: the masks are those of ranking afresh).
    """

    base: PruneConfig
    config: PruneConfig
    allocation: str
    label: str
    use_ranks: bool


def _point_identity(config: PruneConfig, allocation: str) -> dict:
    return {"allocation": allocation,
            "plan": config.plan.to_dict() if config.plan is not None else None,
            "plan_digest": config.plan.digest() if config.plan is not None else None}


class SweepWorker:
    """Prunes and evaluates sweep points on one loaded model; no store (the driver owns it).

    Keeps what the points it computes share: the layer-0 inputs of the calibration windows (pruned
    propagation, captured at the first point that needs them) and the score ranks of each matrix.
    calib_ids: (nsamples, seqlen) token ids; eval_ids: {corpus: (windows, seqlen)}; statistics: the dense
    statistics a ``dense`` propagation prunes from (None otherwise); offload: an `devices.placement.LayerOffload`
    (the model stays home, each layer's walk and evaluation run on its compute device, a GPU), None = the CPU.
    """

    def __init__(self, loaded: LoadedModel, spec: SweepSpec, calib_ids: torch.Tensor,
                 eval_ids: Mapping[str, torch.Tensor], statistics=None, offload=None):
        self.loaded = loaded
        self.spec = spec
        self.calib_ids = calib_ids
        self.eval_ids = eval_ids
        self.statistics = statistics
        self.offload = offload
        self.inputs = None
        self.ranks: dict = {}  # score ranks per (method, matrix)

    def run(self, task: PointTask, progress: ProgressFn) -> dict:
        """The point dict (without "cached") of `task`; progress over [0, 1]: pruning to 0.6, then evaluation."""
        loaded, spec, config = self.loaded, self.spec, task.config
        progress(0.0, f"{task.label}: pruning")
        method = config.method_spec
        ranks = self.ranks if task.use_ranks else None
        if method.needs == "none":  # magnitude: no data, so both propagations are the same; rank once
            pruned = prune_with_statistics(loaded, None, config, ranks=ranks)
        elif spec.propagation == "dense":
            pruned = prune_with_statistics(loaded, self.statistics, config, ranks=ranks)
        else:
            if self.inputs is None:
                self.inputs = capture_layer_inputs(loaded, self.calib_ids, spec.protocol.batch_size,
                                                   offload=self.offload)
            pruned = prune_model(loaded, self.calib_ids, config, spec.protocol.batch_size,
                                 sub_progress(progress, 0.0, 0.6), inputs=self.inputs, offload=self.offload)
        point = {
            "method": config.method,
            "structure": config.structure,
            **_point_identity(config, task.allocation),
            "target_sparsity": task.base.effective_sparsity,
            "sparsity": pruned.sparsity,
            "propagation": spec.propagation,
            "ppl": {},
            "prune_seconds": pruned.seconds,
            "eval_seconds": 0.0,
        }
        evaluation = evaluate.evaluate_setting(loaded, spec.protocol, spec.eval_corpora, pruned, dense=False,
                                               eval_ids=self.eval_ids, label=task.label,
                                               progress=sub_progress(progress, 0.6, 1.0), offload=self.offload)
        point["ppl"] = evaluation.pruned_ppl
        point["eval_seconds"] = evaluation.seconds
        return point


def build_sweep_worker(spec: SweepSpec, fingerprint: str, calib_ids: torch.Tensor,
                       eval_ids: Mapping[str, torch.Tensor], statistics=None,
                       device: Optional[str] = None) -> SweepWorker:
    """A worker in another process (a Ray actor): loads `spec.model` itself and checks that its weights are
    the driver's (`fingerprint`), so every point is computed on the model the driver keyed it by.
    device: the kind of compute device ("cuda"), resolved in the actor: Ray shows an actor that reserved a
    GPU only that GPU, as cuda:0."""
    loaded = load_worker_model(spec.model, fingerprint, "this sweep runs on")
    offload = offload_for(resolve_device(device)) if device not in (None, "cpu") else None
    return SweepWorker(loaded, spec, calib_ids, eval_ids, statistics, offload)


def run_sweep(spec: SweepSpec, loaded: Optional[LoadedModel] = None, store=None,
              progress: Optional[ProgressFn] = None,
              on_point: Optional[Callable[[dict], None]] = None,
              sensitivity: Optional[Mapping] = None,
              executor=None, device=None) -> dict:
    """Run (or resume) a sweep and return the results.json document.

    results = {"model", "dense": {"ppl": {corpus: ppl}, "eval_seconds": {...}}, "points": [...],
    "protocol", "propagation", "allocations", "env"}; each point has method, structure, allocation,
    target_sparsity (the global target asked, a fraction), sparsity (measured over the pruned linears), plan
    (`SparsityPlan.to_dict()`, None for a uniform point), plan_digest (None for uniform), ppl {corpus: ppl},
    prune_seconds, eval_seconds, cached; "execution" records where the points ran and the driver's serial
    seconds (load, prepare: windows, dense evaluation, statistics, plans, store checks; startup of Ray) beside
    the seconds of the points phase.
    `store` (a `pruning_core.store.Store`) makes points durable and resumable; `on_point` sees each point.
    sensitivity: for the "sensitivity" allocation, a `compute_sensitivity` result (or {method: result});
    without one the exact map at `spec.map_sparsities()` is computed once per method (reused from `store`).
    executor: where the missing points are computed: None (the spec's `executor`), an `ExecutorConfig` of kind
    "local" (this process, in grid order), an `ExecutorConfig` of kind "ray" (Ray workers, each loading `spec.model`
    itself), or an executor object. Results and store keys do not depend on it; this driver alone reads and
    writes `store`, so runs on different executors resume each other's points.
    device: where pruning and evaluation compute ("cpu", "cuda", "cuda:N", "auto" or a torch.device; None = the
    CPU). On a GPU the model stays in host memory and one decoder layer at a time visits the GPU (the dense
    evaluation, the statistics walk and every point; a "sensitivity" plan's map stays on the CPU); GPU points
    and statistics are stored apart from CPU ones. Ray workers each reserve one GPU for it.
    """
    spec.validate()
    progress = progress or no_progress
    device = resolve_device(str(device)) if device is not None else torch.device("cpu")
    offload = offload_for(device)
    device_kind = device_key(offload)
    if executor is None:
        executor = spec.executor
    config = executor if isinstance(executor, ExecutorConfig) else executor.config
    if offload is not None and config.kind == "ray" and not config.gpus_per_task > 0:
        raise ConfigError(f"Ray workers compute on {device} only if each reserves a GPU; give the executor "
                          "gpus_per_task=1 (the CLI does so for --device cuda), or use --device cpu.")
    if isinstance(executor, ExecutorConfig):
        executor = make_executor(executor)  # a missing Ray fails here, before any work
    protocol = spec.protocol
    load_seconds = 0.0
    if loaded is None:
        start = time.perf_counter()
        loaded = load_model(spec.model, progress=sub_progress(progress, 0.0, 0.02))
        load_seconds = time.perf_counter() - start
    prepare_start = time.perf_counter()
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
        run_key = content_hash({"sweep": spec.identity(), "model": loaded.fingerprint})
        store.put_run(run_key, "sweep", spec.to_dict())

    # Dense reference perplexities: measured once per model and corpus, then reused from the store.
    dense_eval = evaluate.evaluate_setting(loaded, protocol, spec.eval_corpora, None, eval_ids=eval_ids,
                                           store=store, progress=sub_progress(progress, 0.02, 0.02 + 0.98 / steps),
                                           offload=offload)
    dense = {"ppl": dense_eval.dense_ppl, "eval_seconds": dense_eval.dense_seconds}
    if store is not None:  # this run's own copy, so a running sweep's partial results show the dense line
        store.put_result(content_hash({"sweep_dense": run_key}), "sweep_dense", dense, run_key=run_key)
    results["dense"] = dense
    if store is not None:
        # The dense model's 16-bit safetensors files, measured once per model (store-cached): what the Summary
        # says a pruned point weighs, since a pruned model saved the ordinary way stores its zeros.
        from pruning_core.sizes.measure import sixteen_bit_size

        sixteen_bit_size(loaded, "dense", store=store)

    statistics = None
    allocators = {allocation: get_allocator(allocation) for _, allocation in grid}
    # One set of dense statistics serves dense-propagation pruning and every plan (hessian covers act_sq).
    stats_need = strongest_need([a.needs for a in allocators.values() if a.needs not in ("none", "sensitivity")]
                                + ([c.method_spec.needs for c in settings] if spec.propagation == "dense" else []))

    def dense_statistics(step_progress: ProgressFn):
        nonlocal statistics
        if statistics is None or not statistics.covers(stats_need):
            statistics = cached_statistics(loaded, protocol, stats_need, store, calib_ids,
                                           sub_progress(step_progress, 0.0, 0.9), offload=offload)
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

    # Every point's setting (plans are made here, on the driver) and store key; finished points come from the
    # store and only the missing ones go to the executor. Progress advances by finished points.
    def done_fraction(count: int) -> float:
        return 0.02 + 0.98 * (count + 1) / steps

    points: list = [None] * len(grid)
    keys: list = [None] * len(grid)
    tasks: list[PointTask] = []
    task_points: list[int] = []  # grid index of each task
    done = 0
    # Ranking costs ~3 direct prunes, so it pays only when the method has several unstructured points (counted
    # once here: counting per point made planning quadratic in the grid's size).
    unstructured_points = {}
    for c, _ in grid:
        if not c.structure_spec.is_nm:
            unstructured_points[c.method] = unstructured_points.get(c.method, 0) + 1
    for index, (base, allocation) in enumerate(grid):
        if index % PREPARE_REPORT_EVERY == 0 and len(grid) > PREPARE_REPORT_EVERY:
            # A large grid spends seconds here (a plan, a key, a store look-up per point): say so, and let a
            # cancel through (the progress callback raises it).
            progress(done_fraction(done), f"preparing point {index + 1:,}/{len(grid):,}: plans and stored results")
        label = f"{base.method} {base.structure} {base.effective_sparsity:.0%}"
        if allocation != "uniform":
            label += f" {allocation}"
        lo, hi = done_fraction(done), done_fraction(done + 1)
        plan_progress = sub_progress(progress, lo, lo + (hi - lo) * 0.6)
        # A uniform point keeps its plain sparsity: same masks, same key as before plans existed.
        config = base if allocation == "uniform" else base.with_plan(loaded, plan_of(base, allocation, plan_progress))
        if store is not None:
            keys[index] = content_hash(point_key(loaded.fingerprint, calib_identity, protocol, config, eval_identity,
                                                 device_kind))
            cached = store.get_result(keys[index])
            if cached is not None:
                # The key holds the plan's table, not its maker: name this run's allocator.
                points[index] = {**cached, **_point_identity(config, allocation),
                                 "target_sparsity": base.effective_sparsity, "cached": True}
                if on_point:
                    on_point(points[index])
                done += 1
                progress(done_fraction(done), f"{label}: from the store")
                continue
        use_ranks = unstructured_points.get(config.method, 0) > 1
        tasks.append(PointTask(base=base, config=config, allocation=allocation, label=label, use_ranks=use_ranks))
        task_points.append(index)

    if spec.propagation == "dense" and any(t.config.method_spec.needs != "none" for t in tasks):
        lo, hi = done_fraction(done), done_fraction(done + 1)
        dense_statistics(sub_progress(progress, lo, lo + (hi - lo) * 0.6))
    points_start = time.perf_counter()
    pruning_statistics = statistics if spec.propagation == "dense" else None  # plans' statistics stay here
    recipe = WorkerRecipe(build=build_sweep_worker,
                          args=(spec, loaded.fingerprint, calib_ids, eval_ids, pruning_statistics, device_kind),
                          local=lambda: SweepWorker(loaded, spec, calib_ids, eval_ids, pruning_statistics, offload))

    def task_progress(_: int) -> ProgressFn:  # the local executor runs tasks in order: the next range
        return sub_progress(progress, done_fraction(done), done_fraction(done + 1))

    def waiting() -> None:  # a Ray run calls this while every worker is busy: cancel and heartbeat go here
        progress(done_fraction(done), f"{done}/{len(grid)} points done; running on {executor.config.describe()}")

    with closing(executor.run(recipe, tasks, task_progress, waiting)) as finished:
        for number, point in finished:
            index = task_points[number]
            if points[index] is not None:  # one result per task; never store or report a point twice
                continue
            if store is not None:
                store.put_result(keys[index], "sweep_point", point, run_key=run_key)
            point["cached"] = False
            points[index] = point
            if on_point:
                on_point(point)
            done += 1
            progress(done_fraction(done),
                     f"{tasks[number].label}: ppl " + ", ".join(f"{c} {v:.2f}" for c, v in point["ppl"].items()))
    results["points"] = points  # grid order, whatever order the points finished in
    startup = float(getattr(executor, "startup_seconds", 0.0)) if tasks else 0.0
    results["execution"] = {
        "executor": executor.config.kind,
        "workers": executor.config.workers if executor.config.kind == "ray" else 1,
        "device": str(device),
        "points_computed": len(tasks),
        # Parts of this call's wall time: load and prepare on the driver, starting/joining Ray, then the points
        # (which include each Ray worker's own start, listed apart in worker_start_seconds).
        "seconds": {"load": load_seconds, "prepare": points_start - prepare_start, "startup": startup,
                    "points": time.perf_counter() - points_start - startup},
        "worker_start_seconds": list(getattr(executor, "worker_start_seconds", [])) if tasks else [],
    }
    return results


def run_sweep_job(spec: dict, store, progress: ProgressFn) -> dict:
    """Job entry (`jobs.JOB_KINDS["sweep"]`): `spec` is `SweepSpec.to_dict()`; points go to `store` as they
    finish, so a cancelled or killed job resumes where it stopped. Returns the results.json document.

    Where the points run is the spec's "executor" (absent = this process): it changes no number, so it is in
    no run or point key.
    """
    return run_sweep(SweepSpec.from_dict(spec), store=store, progress=progress)

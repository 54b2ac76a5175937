"""A continual-pruning run: domains D1..DT arrive in order; each strategy prunes at every step; R matrix and BWT.

`run_continual(spec)` is what the CLI (`prunescope continual`), the dashboard's job (kind "continual") and the
benchmark call, so that they agree. For each strategy (`strategies.STRATEGIES`) and step t it asks the strategy
for the step's `PruneResult`, evaluates it on EVERY domain's evaluation split through THE evaluation
(`evaluate.evaluate_setting`), and reads the R matrix, BWT, forward transfer, the average perplexity after the
last step and the mask overlap between consecutive steps off those perplexities (`continual.metrics`).

Cost: what makes a run expensive is calibration walks and evaluations, and both are shared.
- Statistics are dense-propagation statistics, one walk per domain (`statistics_cache.cached_statistics`,
  kept in the store when one is given): every strategy, step and resumed run reuses them, and the accumulated,
  copal and joint statistics are arithmetic on them, never another walk.
- Evaluations are keyed by the content of the masks (and SparseGPT's weights): a step whose mask another
  strategy already produced (step 1 of latest, sequential, accumulated and copal prune with D1 alone; sequential
  keeps D1's mask) is not evaluated again. `joint` prunes and evaluates once.
The result's "work" records the seconds of each kind and how many evaluations were reused.

Where evaluations run: the driver (this process) keeps the cheap, sequential part (statistics, each strategy's
prune chain, the de-duplication by mask digest, the store); the evaluation of each distinct step model is a unit
of work (`EvalTask`, computed by a `ContinualEvalWorker`) for an executor (`pruning_core.executors.base`).
The local executor evaluates each step right after its prune, as the library always did (one step model waits in
memory at a time); a Ray executor gets every distinct step model of the run at once, after all pruning, and its
workers (each loading the model once) evaluate them in parallel; the driver then assembles the R matrices. The
numbers, store keys and records do not depend on the executor. With Ray the distinct step models wait in the
driver's memory until evaluated (masks, and SparseGPT's weights).

Each finished (strategy, step) is stored under a content key (model weights, protocol, the whole domain
sequence's text hashes, strategy, step, setting with its plan, library versions) with its masks (bit-packed) as
an artifact, and for `sequential`, whose next step prunes this one's model, SparseGPT's updated weights too: a
cancelled run resumes without pruning or evaluating finished steps again, and a later step of `sequential`
continues from the stored model.
"""

from __future__ import annotations

import time
from contextlib import closing
import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Union

from pruning_core import evaluate
from pruning_core.allocation.allocators import AllocationInputs, get_allocator, make_plan
from pruning_core.allocation.setting_plan import check_setting
from pruning_core.continual.domains import Domain, DomainSequence
from pruning_core.continual.metrics import average_perplexity, backward_transfer, forward_transfer, mask_overlap
from pruning_core.continual.metrics import r_matrix
from pruning_core.continual.strategies import STRATEGIES, Strategy, get_strategy
from pruning_core.errors import ConfigError
from pruning_core.executors.base import ExecutorConfig, WorkerRecipe, load_worker_model, make_executor
from pruning_core.methods import get_method
from pruning_core.models import LoadedModel, load_model
from pruning_core.progress import ProgressFn, no_progress, sub_progress
from pruning_core.protocol import Protocol
from pruning_core.prune import PruneConfig, PruneResult, Statistics
from pruning_core.setting import Setting
from pruning_core.spec import JobSpec, job_spec

RUN_KIND = "continual"
STEP_KIND = "continual_step"

#: The sign convention every page and table states beside a BWT figure.
BWT_NOTE = ("BWT = mean over earlier domains of (perplexity after the last step - perplexity right after that "
            "domain's own step); positive = forgetting, negative = the earlier domains got better")


@job_spec
@dataclass
class ContinualSpec(JobSpec):
    """One continual run (the job spec of `run_continual_job`).

    domains: corpora in arrival order (embedded names or user file paths; see `domains.DomainSequence`).
    protocol: nsamples, seqlen, seed, evaluation windows, dtype, batch size; its `calib` is ignored (every
        domain calibrates on its own calibration split) and recorded as the first domain.
    setting: what every step prunes to: method (wanda or sparsegpt), sparsity, structure ("unstructured" or N:M)
        and allocation, how the sparsity is spread over the modules (`allocation.allocators.ALLOCATORS`): "owl"
        makes each step's plan from the statistics that strategy prunes with (sequential keeps step 1's plan);
        "sensitivity" reads a sensitivity JSON (`sensitivity`) or this model's stored maps, one plan for all
        steps. Its propagation is "dense": every strategy prunes from statistics of the dense model.
    strategies: names in `strategies.STRATEGIES`, in the order results list them.
    eval_windows: evaluation windows per domain; None = the protocol's.
    model_identity: the dashboard's record of the model file, so a changed file gets a new job key.
    executor: where the step evaluations run (`ExecutorConfig`; in no key: it changes no number).
    """

    WHAT = "continual"
    SETTING_KEYS = {"method": "method", "sparsity": "sparsity", "structure": "structure", "allocation": "allocation"}

    model: str = "embedded"
    protocol: Protocol = field(default_factory=Protocol)
    domains: tuple[str, ...] = ("wiki", "news", "pydocs")
    setting: Setting = field(default_factory=lambda: Setting(propagation="dense", allocation="uniform"))
    sensitivity: Optional[str] = None
    strategies: tuple[str, ...] = tuple(STRATEGIES)
    eval_windows: Optional[int] = None
    model_identity: Optional[dict] = None
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def __post_init__(self) -> None:
        self.domains = tuple(d.strip() for d in self.domains.split(",")) if isinstance(self.domains, str) \
            else tuple(self.domains)
        self.strategies = tuple(s.strip() for s in self.strategies.split(",")) if isinstance(self.strategies, str) \
            else tuple(self.strategies)

    def effective_protocol(self) -> Protocol:
        """The protocol the run uses: `eval_windows` applied, `calib` set to the first domain (for the record)."""
        protocol = replace(self.protocol, calib=self.domains[0] if self.domains else self.protocol.calib)
        if self.eval_windows is not None:
            protocol = replace(protocol, eval_windows=int(self.eval_windows))
        return protocol

    def config(self) -> PruneConfig:
        """The step setting before allocation (dense propagation: statistics are shared across strategies)."""
        return self.setting.prune_config()

    def sequence(self, check: bool = True) -> DomainSequence:
        return DomainSequence(self.domains, check=check)

    def validate(self) -> "ContinualSpec":
        """Check every setting (and read every domain) before any work starts; raises ConfigError."""
        self.effective_protocol().validate()
        check_setting(self.setting)
        method = get_method(self.setting.method)
        if method.needs == "none":
            raise ConfigError(f"Method '{method.name}' uses no calibration data, so every continual strategy gives "
                              "the same mask; choose wanda or sparsegpt.")
        if not self.strategies:
            raise ConfigError(f"No strategy given; choose from {', '.join(STRATEGIES)}.")
        self.strategies = tuple(get_strategy(s, method).name for s in self.strategies)
        if len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"Strategies {', '.join(self.strategies)} repeat a name; give each once.")
        self.setting = replace(self.setting, allocation=get_allocator(self.setting.allocator_name).name)
        self.executor.validate()
        self.sequence(check=True)
        return self

    def _flat(self) -> dict:
        return {"model": self.model, "protocol": self.protocol.to_dict(), "domains": list(self.domains),
                **self.setting_dict(), "sensitivity": self.sensitivity, "strategies": list(self.strategies),
                "eval_windows": self.eval_windows, "model_identity": copy.deepcopy(self.model_identity)}


def _step_key(loaded: LoadedModel, protocol: Protocol, sequence_identity: list, strategy: str, step: int,
              config: PruneConfig) -> str:
    from pruning_core.store import content_hash
    from pruning_core.provenance import library_versions

    versions = library_versions()
    return content_hash({"kind": STEP_KIND, "model": loaded.fingerprint, "protocol": protocol.to_dict(),
                         "domains": sequence_identity, "strategy": strategy, "step": step,
                         "config": config.to_dict(),
                         "versions": {k: versions[k] for k in ("prunescope", "torch", "transformers")}})


def _digest(result: PruneResult) -> str:
    """Content hash of what a step's model is: its masks and (SparseGPT) updated weights."""
    from pruning_core.store import tensors_hash

    weights = tensors_hash(result.weights) if result.weights is not None else None
    return f"{tensors_hash(result.masks)}:{weights}"


def _from_store(store, stored: dict, config: PruneConfig) -> Optional[PruneResult]:
    """The stored step's result (masks, weights), or None when an artifact is gone (the step is redone)."""
    from pruning_core.store import ArtifactMissing

    from pruning_core.mask_files import unpack_mask

    try:
        masks = {name: unpack_mask(packed, tuple(stored["shapes"][name]))
                 for name, packed in store.load_tensors(stored["masks"]).items()}
        weights = store.load_tensors(stored["weights"]) if stored.get("weights") else None
    except ArtifactMissing:
        return None
    return PruneResult(config, masks, weights, float(stored["sparsity"]), {}, 0.0)


def _store_step(store, key: str, strategy: Strategy, step: int, result: PruneResult, ppl: dict, digest: str,
                config: PruneConfig) -> None:
    """Keep a finished step: perplexities, bit-packed masks (1/8 byte per weight) and, for a strategy whose next
    step prunes this result (sequential), SparseGPT's updated weights."""
    from pruning_core.mask_files import pack_mask

    masks = store.save_tensors({name: pack_mask(mask) for name, mask in result.masks.items()}, "continual_masks")
    weights = (store.save_tensors(result.weights, "continual_weights")
               if result.weights is not None and strategy.uses_previous else None)
    store.put_result(key, STEP_KIND, {"strategy": strategy.name, "step": step, "ppl": ppl,
                                      "sparsity": result.sparsity, "masks": masks, "weights": weights,
                                      "shapes": {name: list(mask.shape) for name, mask in result.masks.items()},
                                      "digest": digest, "config": config.to_dict()})


class _Plans:
    """The allocation plan each (strategy, step) prunes with; the sensitivity maps are read once."""

    def __init__(self, spec: ContinualSpec, loaded: LoadedModel, store):
        self.spec, self.loaded = spec, loaded
        self.allocator = get_allocator(spec.setting.allocator_name)
        self.sensitivity = None
        if self.allocator.needs == "sensitivity":
            from pruning_core.allocation.budget import load_sensitivity

            method = spec.setting.method
            self.sensitivity = load_sensitivity(spec.sensitivity, store, loaded, method)
            if self.sensitivity is None:
                raise ConfigError(f"Allocation 'sensitivity' needs a sensitivity map of this model pruned with "
                                  f"{method}; compute one (`prunescope sensitivity --method {method}`), "
                                  "give its JSON (--sensitivity FILE), or choose allocation 'owl' or 'uniform'.")
        self._fixed = {}  # strategy name -> plan kept from step 1

    def config(self, strategy: Strategy) -> PruneConfig:
        base = self.spec.config()
        if self.allocator.name == "uniform":
            return base
        if strategy.name in self._fixed:
            return base.with_plan(self.loaded, self._fixed[strategy.name])
        statistics = strategy.statistics() if self.allocator.needs == "act_sq" else None
        inputs = AllocationInputs(self.loaded, statistics=statistics, sensitivity=self.sensitivity)
        plan = make_plan(self.allocator.name, inputs, self.spec.setting.sparsity)
        if strategy.plan_from_first_step:
            self._fixed[strategy.name] = plan
        return base.with_plan(self.loaded, plan)


@dataclass(frozen=True)
class EvalTask:
    """One step model to evaluate on every domain: what `evaluate.evaluate_setting` applies (keep-masks, True =
    kept, and SparseGPT's updated weights, None for a method that only masks) and how progress names it.
    Picklable, so a Ray worker can take it; the model and evaluation windows are the worker's."""

    masks: dict
    weights: Optional[dict]
    label: str


class ContinualEvalWorker:
    """Evaluates step models on every domain's evaluation windows of one loaded model; no store (the driver
    owns it). eval_ids: {domain: (windows, seqlen) token ids}, read by the driver."""

    def __init__(self, loaded: LoadedModel, protocol: Protocol, names: list[str], eval_ids: dict):
        self.loaded, self.protocol, self.names, self.eval_ids = loaded, protocol, list(names), eval_ids

    def run(self, task: EvalTask, progress: ProgressFn) -> dict:
        """{"ppl": {domain: perplexity}, "seconds": wall seconds of the evaluation}; the model is left dense."""
        evaluation = evaluate.evaluate_setting(self.loaded, self.protocol, self.names, task, dense=False,
                                               eval_ids=self.eval_ids, progress=progress, label=task.label)
        return {"ppl": evaluation.pruned_ppl, "seconds": evaluation.seconds}


def build_continual_worker(model: str, fingerprint: str, protocol: Protocol, names: list[str],
                           eval_ids: dict) -> ContinualEvalWorker:
    """A worker in another process (a Ray actor): loads `model` itself and checks that its weights are the
    driver's (`fingerprint`), so every step is evaluated on the model the run is keyed by."""
    loaded = load_worker_model(model, fingerprint, "this continual run prunes")
    return ContinualEvalWorker(loaded, protocol, names, eval_ids)


def _save_step_masks(out_dir: Path, loaded: LoadedModel, result: PruneResult, strategy: Strategy, step: int,
                     domain: Domain, protocol: Protocol, seen: list[str]) -> str:
    from pruning_core.mask_files import manifest_info_for, save_masks

    folder = Path(out_dir) / strategy.name / f"step-{step}"
    info = manifest_info_for(loaded, result, domain.protocol(protocol))
    info["continual"] = {"strategy": strategy.name, "step": step, "domain": domain.name, "domains_seen": seen,
                         "rule": strategy.rule}
    save_masks(result.masks, folder, info)
    return str(folder)


def run_continual(spec: Union[ContinualSpec, dict], loaded: Optional[LoadedModel] = None, store=None,
                  progress: Optional[ProgressFn] = None, out_dir: Optional[Union[str, Path]] = None,
                  executor=None) -> dict:
    """Every strategy of `spec` over the domain sequence; see the module docstring.

    out_dir: save every step's mask with `mask_files.save_masks` under out_dir/<strategy>/step-<t> (t from 1).
    executor: where the step evaluations run: None (the spec's `executor`), an `ExecutorConfig` of kind "local"
    (this process, each right after its prune), an `ExecutorConfig` of kind "ray" (Ray workers, each loading
    `spec.model` itself), or an executor object. Results and store keys do not depend on it; this driver alone
    reads and writes `store`.
    Returns {"spec", "model" (`describe()`), "protocol", "domains" [names], "dense_ppl" {domain: ppl},
    "strategies": {name: {"rule", "continual" (False for joint), "R" (T x T, rows = steps, columns = domains),
    "bwt", "fwt" (None for T = 1), "average", "overlap" [Jaccard of pruned sets, step t-1 -> t, T-1 values],
    "steps": [{"step" (1-based), "domain", "sparsity" (measured), "ppl" {domain: ppl}, "seconds" (prune +
    evaluation), "prune_seconds", "evaluation_seconds", "from_store", "evaluation_reused", "mask_dir"}]}},
    "bwt_note", "work" {"statistics_seconds", "prune_seconds", "evaluation_seconds", "evaluations",
    "evaluations_reused", "steps_from_store"}, "execution" {"executor", "workers", "evaluations_computed",
    "seconds" {"startup" (starting or joining Ray, driver-side), "evaluations" (wall seconds waiting for the
    executor's evaluations, less startup)}, "worker_start_seconds" [per Ray worker]}, "seconds", "created"}.
    """
    from pruning_core.statistics_cache import cached_statistics

    progress = progress or no_progress
    clock = time.perf_counter()
    spec = (spec if isinstance(spec, ContinualSpec) else ContinualSpec.from_dict(spec)).validate()
    if executor is None:
        executor = spec.executor
    if isinstance(executor, ExecutorConfig):
        executor = make_executor(executor)  # a missing Ray fails here, before any work
    # Local: each step is evaluated right after its prune (one step model in memory, as always). Ray: every
    # distinct step model is evaluated in one executor run after all pruning, so each worker loads the model once.
    deferred = executor.config.kind != "local"
    prune_end = 0.3 if deferred else 1.0  # progress: pruning steps up to here, then the evaluations
    protocol = spec.effective_protocol()
    sequence = spec.sequence(check=False)  # checked by validate
    names = sequence.names
    if loaded is None:
        loaded = load_model(spec.model, progress=sub_progress(progress, 0.0, 0.03))
    method = get_method(spec.setting.method)
    eval_ids = sequence.evaluation_ids(loaded, protocol)
    dense = evaluate.evaluate_setting(loaded, protocol, names, None, eval_ids=eval_ids, store=store,
                                      progress=sub_progress(progress, 0.03, 0.08))
    plans = _Plans(spec, loaded, store)
    identity = sequence.identity()
    work = {"statistics_seconds": 0.0, "prune_seconds": 0.0, "evaluation_seconds": dense.seconds,
            "evaluations": 0, "evaluations_reused": 0, "steps_from_store": 0}
    execution = {"executor": executor.config.kind,
                 "workers": executor.config.workers if executor.config.kind == "ray" else 1,
                 "evaluations_computed": 0, "seconds": {"startup": 0.0, "evaluations": 0.0},
                 "worker_start_seconds": []}
    domain_statistics: dict[str, Statistics] = {}

    def statistics_of(domain: Domain, report: ProgressFn) -> Statistics:
        if domain.name not in domain_statistics:
            start = time.perf_counter()
            report(0.0, f"calibration statistics of {domain.label}")
            domain_statistics[domain.name] = cached_statistics(loaded, domain.protocol(protocol), method.needs,
                                                               store, progress=report)
            work["statistics_seconds"] += time.perf_counter() - start
        return domain_statistics[domain.name]

    evaluated: dict[str, dict[str, float]] = {}  # mask digest -> perplexity per domain
    # Step models waiting for their evaluation, by digest: the task, the progress range of the step that asked
    # for it, and the records (with what to store) that wait for its perplexities.
    pending: dict[str, dict] = {}
    recipe = WorkerRecipe(build=build_continual_worker,
                          args=(spec.model, loaded.fingerprint, protocol, names, eval_ids),
                          local=lambda: ContinualEvalWorker(loaded, protocol, names, eval_ids))

    def settle(digest: str, outcome: dict) -> None:
        """An evaluation came back: fill every record waiting for it and store the steps it finishes."""
        entry = pending.pop(digest)
        ppl = outcome["ppl"]
        evaluated[digest] = ppl
        work["evaluations"] += 1
        work["evaluation_seconds"] += outcome["seconds"]
        for record, stored in entry["waiting"]:
            if record is entry["evaluator"]:
                record["evaluation_seconds"] = outcome["seconds"]
            record["seconds"] = record["prune_seconds"] + record["evaluation_seconds"]
            record["ppl"] = dict(ppl)
            if stored is not None:
                _store_step(store, *stored[:4], ppl, *stored[4:])

    def evaluate_pending() -> None:
        """Run every waiting evaluation on the executor; results come back in finish order."""
        if not pending:
            return
        digests = list(pending)
        tasks = [pending[d]["task"] for d in digests]
        finished = 0

        def fraction() -> float:
            return prune_end + (1.0 - prune_end) * finished / len(tasks) if deferred else prune_end

        def task_progress(index: int) -> ProgressFn:
            if deferred:  # its share of the evaluation phase
                return sub_progress(progress, fraction(), prune_end + (1.0 - prune_end) * (finished + 1) / len(tasks))
            return sub_progress(pending[digests[index]]["report"], 0.3, 1.0)  # the step's own range, as before

        def waiting() -> None:  # a Ray run calls this while every worker is busy: cancel and heartbeat go here
            progress(fraction(), f"{finished}/{len(tasks)} evaluations done; running on "
                                 f"{executor.config.describe()}")

        start = time.perf_counter()
        with closing(executor.run(recipe, tasks, task_progress, waiting)) as results:
            for index, outcome in results:
                if digests[index] not in pending:  # one result per task; never store a step twice
                    continue
                settle(digests[index], outcome)
                finished += 1
                if deferred:
                    progress(fraction(), f"{tasks[index].label}: evaluated ({finished}/{len(tasks)})")
        startup = float(getattr(executor, "startup_seconds", 0.0))
        execution["evaluations_computed"] += len(tasks)
        execution["seconds"]["startup"] += startup
        execution["seconds"]["evaluations"] += time.perf_counter() - start - startup
        execution["worker_start_seconds"] += list(getattr(executor, "worker_start_seconds", []))

    total_steps = len(spec.strategies) * len(sequence)
    runs: list[tuple[Strategy, list[dict], list[float]]] = []  # per strategy: its steps' records and overlaps
    for s_index, name in enumerate(spec.strategies):
        strategy = get_strategy(name, method)
        previous: Optional[PruneResult] = None
        previous_digest: Optional[str] = None
        steps: list[dict] = []
        overlaps: list[float] = []
        for t, domain in enumerate(sequence):
            done = s_index * len(sequence) + t
            report = sub_progress(progress, 0.08 + (prune_end - 0.08) * done / total_steps,
                                  0.08 + (prune_end - 0.08) * (done + 1) / total_steps)
            if strategy.sees_all_domains and t == 0:
                for other in sequence:
                    strategy.observe(statistics_of(other, report))
            elif not strategy.sees_all_domains:
                strategy.observe(statistics_of(domain, report))
            seen = names if strategy.sees_all_domains else names[:t + 1]
            waits_on: Optional[str] = None  # digest of a pending evaluation this step's perplexities come from
            to_store = None  # what `_store_step` needs besides the perplexities, for a step pruned now
            evaluator = False
            if strategy.static and previous is not None:  # joint: the same mask at every step
                result, digest = previous, previous_digest
                ppl = None if digest in pending else steps[-1]["ppl"]
                waits_on = digest if digest in pending else None
                record = {**steps[-1], "prune_seconds": 0.0, "evaluation_seconds": 0.0, "seconds": 0.0,
                          "evaluation_reused": True}
            else:
                config = plans.config(strategy)
                key = _step_key(loaded, protocol, identity, strategy.name, t, config) if store is not None else None
                stored = store.get_result(key) if key is not None else None
                result = _from_store(store, stored, config) if stored is not None else None
                if result is not None:
                    ppl = {d: float(v) for d, v in stored["ppl"].items()}
                    digest = stored["digest"]
                    evaluated.setdefault(digest, ppl)
                    work["steps_from_store"] += 1
                    record = {"sparsity": result.sparsity, "prune_seconds": 0.0, "evaluation_seconds": 0.0,
                              "from_store": True, "evaluation_reused": False}
                else:
                    report(0.1, f"{strategy.name}: pruning step {t + 1} ({domain.label})")
                    result = strategy.prune(loaded, config, previous)
                    work["prune_seconds"] += result.seconds
                    digest = _digest(result)
                    reused = digest in pending or digest in evaluated
                    ppl = None
                    if reused:
                        work["evaluations_reused"] += 1
                        if digest in pending:
                            waits_on = digest
                        else:
                            ppl = evaluated[digest]
                    else:
                        pending[digest] = {"task": EvalTask(result.masks, result.weights,
                                                            f"{strategy.name} step {t + 1}"),
                                           "result": result, "report": report, "waiting": [], "evaluator": None}
                        waits_on, evaluator = digest, True
                    record = {"sparsity": result.sparsity, "prune_seconds": result.seconds,
                              "evaluation_seconds": 0.0, "from_store": False, "evaluation_reused": reused}
                    if store is not None:
                        # A step waiting for another's evaluation keeps that step's tensors (the same content, by
                        # digest), not a second copy of its own.
                        kept = result if waits_on is None or evaluator else replace(
                            result, masks=pending[digest]["result"].masks, weights=pending[digest]["result"].weights)
                        to_store = (key, strategy, t, kept, digest, config)
                        if waits_on is None:
                            _store_step(store, key, strategy, t, result, ppl, digest, config)
                            to_store = None
                record["seconds"] = record["prune_seconds"] + record["evaluation_seconds"]
            record = {**record, "step": t + 1, "domain": domain.name, "ppl": None if ppl is None else dict(ppl),
                      "domains_seen": list(seen), "mask_dir": None}
            if waits_on is not None:
                if evaluator:
                    pending[waits_on]["evaluator"] = record
                pending[waits_on]["waiting"].append((record, to_store))
                if not deferred:
                    evaluate_pending()
            if out_dir is not None:
                record["mask_dir"] = _save_step_masks(Path(out_dir), loaded, result, strategy, t + 1, domain,
                                                      protocol, list(seen))
            if previous is not None:
                overlaps.append(mask_overlap(previous.masks, result.masks))
            steps.append(record)
            previous, previous_digest = result, digest
            report(1.0, f"{strategy.name}: step {t + 1} of {len(sequence)} done")
        runs.append((strategy, steps, overlaps))
    evaluate_pending()  # Ray: every distinct step model at once; local: nothing is left
    out: dict[str, dict] = {}
    for strategy, steps, overlaps in runs:
        R = r_matrix([record["ppl"] for record in steps], names)
        out[strategy.name] = {"rule": strategy.rule, "continual": not strategy.sees_all_domains, "R": R,
                              "bwt": backward_transfer(R), "fwt": forward_transfer(R),
                              "average": average_perplexity(R), "overlap": overlaps, "steps": steps}
    progress(1.0, "continual run done")
    return {"spec": spec.to_dict(), "model": loaded.describe(), "protocol": protocol.to_dict(), "domains": names,
            "dense_ppl": dense.dense_ppl, "strategies": out, "bwt_note": BWT_NOTE, "work": work,
            "execution": execution, "seconds": time.perf_counter() - clock, "created": time.time()}


def run_continual_job(spec: dict, store, progress: ProgressFn) -> dict:
    """Job entry (`jobs.JOB_KINDS["continual"]`): `run_continual` with its steps kept in `store`.

    Where the evaluations run is the spec's "executor" (absent = this process): it changes no number, so it is
    in no key."""
    return run_continual(spec, store=store, progress=progress)

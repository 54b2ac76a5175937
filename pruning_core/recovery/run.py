"""A recovery run: prune (or take a mask or a structured model), attach a masked adapter, train, measure.

`run_recovery(spec)` is what the CLI (`prunescope recover`), the dashboard's job (kind "recovery") and the
benchmark call. Steps:

1. the pruned model: a copy of the dense model pruned with the spec's setting (method, structure, sparsity or
   plan / allocation, as an export prunes), or with an exported mask folder applied, or a structured folder
   loaded; the dense model in memory is never changed;
2. dense and pruned perplexity per corpus through THE evaluation (`evaluate.evaluate_setting`);
3. ranks per module (`ranks`: uniform, gradient or sensitivity at the parameter count of uniform rank r);
4. the masked adapter trained on windows of the training corpus's calibration split (`train.train_adapter`),
   with quick evaluations for the curve, checkpoints, cancel and resume;
   step-wise (`schedule`): prune to each sparsity in turn, recovering between steps (steps split evenly), the
   previous step's adapter merged first, so later masks grow from the recovered weights;
5. the adapter saved in PEFT's format (+ its ranks) in the store and, with `out_dir`, next to the mask;
   merged into the weights, its sparsity counted (it must equal the pruned sparsity), and the merged model
   evaluated through THE evaluation: the "after" figures are the merged model's, which is what ships.

The result is stored under a key of everything that determines it; the same spec is not trained twice.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Optional, Union

import torch

from pruning_core import claims, evaluate
from pruning_core.allocation.setting_plan import setting_config, setting_plan
from pruning_core.errors import ConfigError
from pruning_core.models import LoadedModel, load_model
from pruning_core.progress import ProgressFn, no_progress, sub_progress
from pruning_core.protocol import Protocol, calibration_ids
from pruning_core.recovery import masked_lora, ranks as rank_plans
from pruning_core.recovery.train import TrainConfig, batch_loss, train_adapter, training_windows
from pruning_core.setting import Setting
from pruning_core.spec import JobSpec, job_spec

#: Smallest pruning gap (a fraction of the dense perplexity) that a "share of the gap won back" is computed for:
#: below it the share divides by noise (a 0.1 % gap closed by 5 % would read 5,000 %), so it is None ("–").
MIN_GAP = 0.01
RUN_KIND = "recovery"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
RANKS_FILE = "ranks.json"


@job_spec
@dataclass
class RecoverySpec(JobSpec):
    """One recovery run (the job spec of `run_recovery_job`).

    The pruned model: `setting` (method / structure / sparsity / propagation / allocation / plan, resolved as an
    export resolves it: `allocation.setting_plan`), or mask_dir (an exported mask folder), or structured_dir (a
    structured folder saved by `prunescope structured` or its export). The flat dict names the allocation
    "allocator", as recovery specs always stored it (their keys hash that dict).
    schedule: step-wise sparsities before the final one (e.g. (0.3, 0.5) with sparsity 0.6: prune 30 %, recover,
    50 %, recover, 60 %, recover), unstructured only.
    train_corpus: corpus whose calibration split the adapter trains on; train: `TrainConfig` fields.
    rank / alpha / kinds: LoRA rank r, alpha (default 2r), module kinds adapted (default every prunable kind);
    rank_allocation: `ranks.RANK_ALLOCATIONS`; sensitivity_costs: {module name: cost} for "sensitivity".
    eval_corpora: corpora measured before and after (default: the training corpus); curve_windows: windows per
    corpus of the quick evaluations during training. prompt / max_new_tokens: the sample text (0 = none).
    model_identity: the dashboard's record of the model file, so a changed file gets a new key.
    """

    WHAT = "recovery"
    SETTING_KEYS = {"method": "method", "structure": "structure", "sparsity": "sparsity",
                    "propagation": "propagation", "allocation": "allocator", "plan": "plan"}

    model: str = "embedded"
    protocol: Protocol = field(default_factory=Protocol)
    setting: Setting = field(default_factory=Setting)
    mask_dir: Optional[str] = None
    structured_dir: Optional[str] = None
    schedule: tuple[float, ...] = ()
    train_corpus: str = "wiki"
    train: dict = field(default_factory=dict)
    rank: int = 8
    alpha: Optional[float] = None
    kinds: tuple[str, ...] = ()
    rank_allocation: str = "uniform"
    sensitivity_costs: Optional[dict] = None
    eval_corpora: tuple[str, ...] = ()
    curve_windows: int = 8
    prompt: str = ""
    max_new_tokens: int = 32
    model_identity: Optional[dict] = None

    def __post_init__(self) -> None:
        self.schedule = tuple(float(s) for s in self.schedule)
        self.kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        self.eval_corpora = (self.eval_corpora,) if isinstance(self.eval_corpora, str) else tuple(self.eval_corpora)

    @property
    def corpora(self) -> tuple[str, ...]:
        return self.eval_corpora or (self.train_corpus,)

    @property
    def source(self) -> str:
        """"mask", "structured" or "setting": where the pruned model comes from."""
        return "mask" if self.mask_dir else "structured" if self.structured_dir else "setting"

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.train)

    def setting_at(self, sparsity: Optional[float] = None) -> Setting:
        """The pruning setting, or (a step-wise step) the same method at `sparsity` without the final plan."""
        return self.setting if sparsity is None else replace(self.setting, sparsity=float(sparsity), plan=None)

    def validate(self) -> "RecoverySpec":
        """Check every setting before any work starts; raises ConfigError naming the problem."""
        self.protocol.validate()
        self.train_config()
        if self.mask_dir and self.structured_dir:
            raise ConfigError("Give a mask folder or a structured folder to recover, not both.")
        if self.source == "setting":
            setting_config(self.setting)
        for path in (self.mask_dir, self.structured_dir):
            if path and not Path(path).is_dir():
                raise ConfigError(f"{path} is not a folder; give the folder an export or a structured run wrote.")
        if self.schedule:
            if self.source != "setting" or self.setting.structure != "unstructured" or self.setting.plan is not None:
                raise ConfigError("Step-wise recovery prunes unstructured sparsities afresh at each step; give a "
                                  "method and a final sparsity (not a mask, plan or N:M structure).")
            if not all(0 < s < 1 for s in self.schedule):
                raise ConfigError(f"Every step-wise sparsity must be between 0 and 1, got {list(self.schedule)}.")
            # Strictly: a repeated step would prune to the same sparsity twice and split the steps for nothing.
            rising = all(a < b for a, b in zip(self.schedule, self.schedule[1:]))
            if not rising or self.schedule[-1] >= float(self.setting.sparsity):
                raise ConfigError(f"The step-wise schedule {list(self.schedule)} must rise and end below the final "
                                  f"sparsity {self.setting.sparsity}.")
        if int(self.rank) < 1:
            raise ConfigError(f"The LoRA rank must be at least 1, got {self.rank}.")
        if self.rank_allocation not in rank_plans.RANK_ALLOCATIONS:
            raise ConfigError(f"Unknown rank allocation '{self.rank_allocation}'; use one of "
                              f"{', '.join(rank_plans.RANK_ALLOCATIONS)}.")
        if self.rank_allocation == "sensitivity" and not self.sensitivity_costs:
            raise ConfigError("Sensitivity-allocated ranks need the sensitivity map's costs; compute a map on the "
                              "Sensitivity page first or choose gradient ranks.")
        if int(self.curve_windows) < 1 or int(self.max_new_tokens) < 0:
            raise ConfigError("curve_windows must be 1 or more and max_new_tokens 0 or more.")
        return self

    def _flat(self) -> dict:
        d = {name: copy.deepcopy(getattr(self, name)) for name in (f.name for f in fields(self)) if name != "setting"}
        d.update(protocol=self.protocol.to_dict(), **copy.deepcopy(self.setting_dict()))
        d["schedule"], d["kinds"], d["eval_corpora"] = list(self.schedule), list(self.kinds), list(self.eval_corpora)
        return d


def gap_won_back(dense: float, pruned: float, recovered: float) -> Optional[float]:
    """(pruned - recovered) / (pruned - dense): the share of the perplexity pruning cost that recovery won back
    (1.0 = back to dense, above 1 = better than dense, negative = worse than pruned); None when pruning cost
    less than MIN_GAP of the dense perplexity."""
    gap = pruned - dense
    return (pruned - recovered) / gap if gap >= MIN_GAP * dense else None


def run_key(loaded: LoadedModel, spec: RecoverySpec) -> str:
    """Content hash of everything that determines a recovery result."""
    from pruning_core.store import content_hash
    from pruning_core.provenance import library_versions

    versions = library_versions()
    sources = {}
    for path in (spec.mask_dir, spec.structured_dir):
        if path:  # the folder's files, not its name, decide the pruned model
            sources[path] = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(path).iterdir()
                                   if p.is_file())
    return content_hash({"kind": RUN_KIND, "model": loaded.fingerprint, "spec": spec.identity(), "sources": sources,
                         "versions": {k: versions[k] for k in ("prunescope", "torch", "transformers", "peft")}})


def adapter_folder(store, key: str) -> Path:
    """Where the store keeps the adapter of the recovery `key` (a PEFT folder)."""
    return store.path.parent / "adapters" / key


def _copy_of(loaded: LoadedModel, model=None, suffix: str = "copy") -> LoadedModel:
    return LoadedModel(model if model is not None else copy.deepcopy(loaded.model), loaded.tokenizer, loaded.source,
                       f"{loaded.name} ({suffix})", loaded.adapter)


def pruned_copy(loaded: LoadedModel, spec: RecoverySpec, protocol: Protocol, calib, store=None,
                sparsity: Optional[float] = None, base: Optional[LoadedModel] = None,
                progress: Optional[ProgressFn] = None) -> tuple[LoadedModel, dict]:
    """A pruned copy of `base` (default `loaded`) per `spec` (at `sparsity` for a step-wise step) and a record of
    how it was pruned: {"source", "description", "sparsity" (measured, over pruned linears), "prune_seconds",
    "result" (the `PruneResult` for a setting, else None)}."""
    from pruning_core.masks import measured_sparsity

    progress = progress or no_progress
    base = base or loaded
    clock = time.perf_counter()
    result = None
    if spec.source == "structured":
        from pruning_core.structured.slicing import load_structured

        model = load_structured(spec.structured_dir)
        copy_ = LoadedModel(model, loaded.tokenizer, str(spec.structured_dir), f"{loaded.name} (structured)",
                            loaded.adapter)
        description = f"structured model from {spec.structured_dir}"
    elif spec.source == "mask":
        from pruning_core.mask_files import apply_mask_dir

        copy_ = _copy_of(base, suffix="masked")
        manifest = apply_mask_dir(copy_, spec.mask_dir, permanent=True)["manifest"]
        description = (f"mask {Path(spec.mask_dir).name}: {manifest.get('method', '?')} "
                       f"{manifest.get('structure', '')}".strip())
    else:
        from pruning_core.prune import prune_model

        setting = spec.setting_at(sparsity)
        plan = setting_plan(base, protocol, setting, store, calib, sub_progress(progress, 0.0, 0.1))
        config = setting_config(setting, base, plan)
        result = prune_model(base, calib, config, protocol.batch_size, progress=sub_progress(progress, 0.1, 1.0))
        copy_ = _copy_of(base, suffix="pruned")
        with torch.no_grad():
            for name, keep in result.masks.items():
                weight = copy_.model.get_submodule(name).weight.data
                if result.weights is not None and name in result.weights:
                    weight.copy_(result.weights[name].to(weight.dtype))
                weight.mul_(keep.to(weight.dtype))
        words = f"{config.method} {config.structure} {config.effective_sparsity:.0%}"
        description = words + (f" ({plan.allocator} plan)" if plan is not None else "")
    modules = copy_.adapter.prunable_modules(copy_.model)
    return copy_, {"source": spec.source, "description": description,
                   "sparsity": measured_sparsity(copy_.model, modules)["overall"],
                   "prune_seconds": time.perf_counter() - clock, "result": result}


def save_mask_beside(loaded: LoadedModel, spec: RecoverySpec, record: dict, protocol: Protocol, out: Path):
    """The pruned model's mask in `out`/mask (the export format), so the adapter next to it can be loaded onto a
    freshly pruned copy of the dense model: the setting's masks, or the given mask folder copied. None when no
    mask reproduces the pruned model (structured folders; step-wise runs, whose later masks were taken on
    recovered weights)."""
    from pruning_core.mask_files import manifest_info_for, save_masks

    folder = out / "mask"
    if spec.source == "mask":
        shutil.copytree(spec.mask_dir, folder, dirs_exist_ok=True)
        return str(folder)
    if spec.source == "setting" and not spec.schedule and record.get("result") is not None:
        save_masks(record["result"].masks, folder, manifest_info_for(loaded, record["result"], protocol))
        return str(folder)
    return None


def _targets(pruned: LoadedModel, kinds: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    adapter = pruned.adapter
    unknown = sorted(set(kinds) - set(adapter.module_kinds))
    if unknown:
        raise ConfigError(f"Unknown module kinds {unknown}; this model has {', '.join(adapter.module_kinds)}.")
    chosen = [k for k in adapter.module_kinds if not kinds or k in kinds]
    layers = len(adapter.decoder_layers(pruned.model))
    return {adapter.qualified_name(i, k): pruned.model.get_submodule(adapter.qualified_name(i, k))
            for i in range(layers) for k in chosen}


def rank_plan(pruned: LoadedModel, spec: RecoverySpec, windows: torch.Tensor, config: TrainConfig,
              progress: ProgressFn) -> rank_plans.RankPlan:
    """The ranks of `spec.rank_allocation` for the pruned model's targets (see `ranks`)."""
    targets = _targets(pruned, spec.kinds)
    shapes = {n: tuple(m.weight.shape) for n, m in targets.items()}
    if spec.rank_allocation == "uniform":
        return rank_plans.uniform_plan(shapes, spec.rank)
    if spec.rank_allocation == "sensitivity":
        return rank_plans.sensitivity_plan(spec.sensitivity_costs or {}, shapes, spec.rank)
    # gradient: a few batches of the training windows (held apart from nothing: importance only reads them)
    batches = [windows[i:i + config.batch_size] for i in range(0, min(len(windows), 4 * config.batch_size),
                                                                  config.batch_size)]

    def loss_fn(batch):
        from pruning_core.precision import autocast_for

        with autocast_for(config.dtype):
            return batch_loss(pruned.model, batch)

    grads = rank_plans.masked_gradients(pruned.model, list(targets), batches, loss_fn, progress)
    return rank_plans.gradient_plan(grads, spec.rank)


def _quick_evaluator(peft_loaded: LoadedModel, protocol: Protocol, curve_ids: dict):
    """() -> {corpus: perplexity} of the model as it is now on the curve's first windows, through THE evaluation
    (in the protocol's dtype, like the before and after figures the curve is drawn against)."""

    def evaluate_now() -> dict:
        return evaluate.evaluate_setting(peft_loaded, protocol, list(curve_ids), evaluate.IN_PLACE, dense=False,
                                         eval_ids=curve_ids, label="recovering").pruned_ppl

    return evaluate_now


def _train_stage(pruned: LoadedModel, spec: RecoverySpec, config: TrainConfig, windows: torch.Tensor,
                 curve_ids: dict, folder: Optional[Path], key: str, progress: ProgressFn):
    """Attach the masked adapter (ranks per `spec`) to `pruned` and train it; returns (peft_model, RankPlan,
    history)."""
    plan = rank_plan(pruned, spec, windows, config, sub_progress(progress, 0.0, 0.05))
    if not plan.ranks:
        raise ConfigError("The rank allocation gave no module a rank; raise the rank budget.")
    torch.manual_seed(int(config.seed))  # the adapter's A init
    default = max(plan.ranks.values())
    pattern = {n: r for n, r in plan.ranks.items() if r != default}
    lora = masked_lora.lora_config(list(plan.ranks), default, spec.alpha, rank_pattern=pattern,
                                   fan_in_fan_out=pruned.adapter.family == "gpt2")
    peft_model = masked_lora.attach(pruned.model, lora)
    evaluate_now = _quick_evaluator(pruned, spec.protocol, curve_ids)  # pruned.model now carries the LoRA layers
    history = train_adapter(peft_model, pruned.model, windows, config, checkpoint_dir=folder, key=key,
                            progress=sub_progress(progress, 0.05, 1.0), evaluate=evaluate_now)
    return peft_model, plan, history


def save_adapter(peft_model, plan: rank_plans.RankPlan, folder: Path, record: dict) -> dict:
    """The adapter in PEFT's format plus ranks.json (ranks and the setting it recovers) in `folder`;
    returns {"folder", "bytes" (adapter files), "files"}."""
    folder.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(folder))
    (folder / RANKS_FILE).write_text(json.dumps({"ranks": plan.to_dict(), **record}, indent=1))
    files = [folder / name for name in ADAPTER_FILES]
    return {"folder": str(folder), "bytes": sum(p.stat().st_size for p in files if p.exists()),
            "files": [str(p) for p in files]}


def run_recovery(spec: Union[RecoverySpec, dict], loaded: Optional[LoadedModel] = None, store=None,
                 progress: Optional[ProgressFn] = None, out_dir: Optional[Union[str, Path]] = None,
                 merged_dir: Optional[Union[str, Path]] = None) -> dict:
    """Recover the pruned setting of `spec`; see the module docstring.

    out_dir: also copy the adapter (PEFT files + ranks.json) there; merged_dir: save the merged model there
    (a Hugging Face folder, loadable with `from_pretrained`).
    Returns {"spec", "key", "model", "pruned": {"source", "description", "sparsity"}, "protocol", "dense_ppl",
    "pruned_ppl", "recovered_ppl" (merged model), "recovered_share" {corpus: (pruned - recovered) / (pruned -
    dense), None when pruning cost less than MIN_GAP}, "history" (loss and quick-evaluation curve, seconds),
    "stages" (step-wise: one record per step),
    "ranks" (`RankPlan.to_dict`), "adapter" {"parameters", "bytes", "model_bytes", "fraction_of_model",
    "folder"}, "sparsity" {"before", "merged", "pruned_weights_zero": bool}, "samples", "seconds",
    "from_store", "created"}.
    """
    progress = progress or no_progress
    spec = (spec if isinstance(spec, RecoverySpec) else RecoverySpec.from_dict(spec)).validate()
    config = spec.train_config()
    protocol, corpora = spec.protocol, spec.corpora
    if loaded is None:
        loaded = load_model(spec.model, progress=sub_progress(progress, 0.0, 0.03))
    key = run_key(loaded, spec)
    if store is not None:
        stored = store.get_result(key)
        if stored is not None and out_dir is None and merged_dir is None:
            progress(1.0, "recovery found in the store")
            return {**stored, "from_store": True}
    clock = time.perf_counter()
    eval_ids = evaluate.evaluation_windows(loaded, protocol, corpora)
    curve_ids = {c: ids[:int(spec.curve_windows)] for c, ids in eval_ids.items()}
    from pruning_core.data import load_corpus_text, tokenize_text

    tokens = tokenize_text(loaded.tokenizer, load_corpus_text(spec.train_corpus, "calibration"))
    windows = training_windows(tokens, config.seqlen, config.steps * config.batch_size, config.seed)
    calib = calibration_ids(loaded, protocol) if spec.source == "setting" else None
    dense = evaluate.evaluate_setting(loaded, protocol, corpora, None, eval_ids=eval_ids, store=store,
                                      progress=sub_progress(progress, 0.03, 0.08))
    work = (store.path.parent / "recovery" / key) if store is not None else None
    sparsities = list(spec.schedule) + [float(spec.setting.sparsity)] if spec.schedule else [None]
    per_stage = [config.steps // len(sparsities)] * len(sparsities)
    per_stage[-1] += config.steps - sum(per_stage)
    stages, base, peft_model, pruned_record, history = [], loaded, None, None, None
    span = 0.82 / len(sparsities)
    for i, (sparsity, steps) in enumerate(zip(sparsities, per_stage)):
        lo = 0.08 + i * span
        pruned, pruned_record = pruned_copy(loaded, spec, protocol, calib, store, sparsity, base,
                                            sub_progress(progress, lo, lo + 0.1 * span))
        before = evaluate.evaluate_setting(pruned, protocol, corpora, evaluate.IN_PLACE, dense=False,
                                           eval_ids=eval_ids, progress=sub_progress(progress, lo + 0.1 * span,
                                                                                    lo + 0.2 * span),
                                           label=f"pruned ({pruned_record['description']})")
        offset = sum(per_stage[:i]) * config.batch_size
        stage_config = TrainConfig(**{**config.to_dict(), "steps": steps,
                                      "max_seconds": (config.max_seconds / len(sparsities)
                                                      if config.max_seconds else None)})
        stage_windows = windows[offset:offset + steps * config.batch_size]
        folder = work / f"stage-{i}" if work is not None else None
        peft_model, plan, history = _train_stage(pruned, spec, stage_config, stage_windows, curve_ids, folder,
                                                 f"{key}:{i}", sub_progress(progress, lo + 0.2 * span, lo + span))
        stages.append({"sparsity": pruned_record["sparsity"], "pruned_ppl": before.pruned_ppl,
                       "history": history.to_dict(), "steps": steps})
        if i < len(sparsities) - 1:  # the next step prunes the recovered weights: merge, forget the adapter
            merged = peft_model.merge_and_unload()
            base = _copy_of(loaded, merged, f"recovered at {pruned_record['sparsity']:.0%}")
    pruned_ppl = stages[-1]["pruned_ppl"]  # the final step's model before its recovery
    parameters = masked_lora.trainable_parameters(peft_model)
    record = {"setting": pruned_record["description"], "model": loaded.name, "fingerprint": loaded.fingerprint,
              "spec": spec.to_dict()}
    saved = save_adapter(peft_model, plan, adapter_folder(store, key) if store is not None
                         else Path(out_dir) / "adapter" if out_dir else Path(work or ".") / "adapter", record) \
        if (store is not None or out_dir is not None) else {"folder": None, "bytes": None, "files": []}
    kept_folder = saved["folder"]  # the store's own copy when there is a store
    if out_dir is not None and store is not None:
        target = Path(out_dir) / "adapter"
        shutil.copytree(saved["folder"], target, dirs_exist_ok=True)
        saved = {**saved, "folder": str(target)}
    mask_dir = save_mask_beside(loaded, spec, pruned_record, protocol, Path(out_dir)) if out_dir is not None else None
    # Merge: the shipped model. Its zeros must be exactly the pruned model's.
    keep = {n: m.keep_bits for n, m in masked_lora.masked_modules(peft_model).items()}  # bit-packed
    merged = peft_model.merge_and_unload()
    merged_loaded = _copy_of(loaded, merged, "recovered")
    modules = merged_loaded.adapter.prunable_modules(merged)
    from pruning_core.masks import measured_sparsity
    from pruning_core.packed_masks import pack_bits

    merged_sparsity = measured_sparsity(merged, modules)["overall"]
    # No weight outside its keep pattern became non-zero: the packed non-zeros have no bit the pattern lacks.
    zeros_kept = all(not bool((pack_bits(merged.get_submodule(_strip(n)).weight != 0) & ~k).any())
                     for n, k in keep.items())
    after = evaluate.evaluate_setting(merged_loaded, protocol, corpora, evaluate.IN_PLACE, dense=False,
                                      eval_ids=eval_ids, progress=sub_progress(progress, 0.9, 0.97),
                                      label="recovered")
    samples = []
    if int(spec.max_new_tokens) > 0:
        samples = claims.compare_models(loaded, merged_loaded, [str(spec.prompt or claims.DEFAULT_PROMPT)],
                                        int(spec.max_new_tokens))
    if merged_dir is not None:
        from pruning_core.mask_files import _drop_quantization_config

        _drop_quantization_config(merged)
        merged.save_pretrained(str(merged_dir), safe_serialization=True)
        loaded.tokenizer.save_pretrained(str(merged_dir))
    model_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    share = {c: gap_won_back(dense.dense_ppl[c], pruned_ppl[c], after.pruned_ppl[c]) for c in corpora}
    result = {"spec": spec.to_dict(), "key": key, "model": loaded.describe(),
              "pruned": {k: pruned_record[k] for k in ("source", "description", "sparsity")},
              "protocol": protocol.to_dict(), "dense_ppl": dense.dense_ppl, "pruned_ppl": pruned_ppl,
              "recovered_ppl": after.pruned_ppl, "recovered_share": share, "history": history.to_dict(),
              "stages": stages, "ranks": plan.to_dict(),
              "adapter": {"parameters": parameters, "bytes": saved["bytes"], "model_bytes": model_bytes,
                          "fraction_of_model": (saved["bytes"] / model_bytes) if saved["bytes"] else None,
                          "folder": saved["folder"]},
              "sparsity": {"before": pruned_record["sparsity"], "merged": merged_sparsity,
                           "pruned_weights_zero": zeros_kept},
              "samples": samples, "seconds": time.perf_counter() - clock,
              "train_seconds": sum(s["history"]["seconds"] for s in stages),
              "merged_dir": str(merged_dir) if merged_dir is not None else None, "mask_dir": mask_dir,
              "created": time.time()}
    if store is not None:
        store.put_run(key, RUN_KIND, spec.to_dict())
        # The store names its own adapter copy and no output folder: an export folder is written in a temporary
        # folder first and may later be replaced or moved, so a stored path into it would go stale.
        store.put_result(key, RUN_KIND, {**result, "adapter": {**result["adapter"], "folder": kept_folder},
                                         "merged_dir": None, "mask_dir": None}, run_key=key)
    progress(1.0, "recovery done")
    return {**result, "from_store": False}


def _strip(name: str) -> str:
    """A PEFT module name ("base_model.model.model.layers.0...") as the plain model names it."""
    prefix = "base_model.model."
    return name[len(prefix):] if name.startswith(prefix) else name


def run_recovery_job(spec: dict, store, progress: ProgressFn) -> dict:
    """Job entry (`jobs.JOB_KINDS["recovery"]`): `run_recovery` with its result and adapter in `store`."""
    return run_recovery(spec, store=store, progress=progress)

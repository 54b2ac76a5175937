"""The export pipeline: take a chosen setting out of PruneScope.

`run_export(options)` is the pipeline shared by `prunescope export` and the dashboard's Export page: load,
prune, evaluate dense and pruned, then write the mask folder (masks.safetensors + manifest.json), the
report (html, md, json, optionally pdf; its sections in `export.report`) and, on request, the pruned model,
the llm-compressor recipe and lm-eval results. `run_apply_mask` re-applies an exported mask to a freshly
loaded model and verifies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pruning_core.plan import module_sizes
from pruning_core.outputs.files import write_json
from pruning_core.errors import ConfigError, PruneScopeError
from pruning_core.progress import ProgressFn, no_progress, sub_progress


#: Probe windows of the report's heatmap and exact rows measured for its agreement (first and last layer).
PROBE_WINDOWS = 8
AGREEMENT_ROWS = 2


def _step_progress(progress: ProgressFn, lo: float, hi: float, label: str) -> ProgressFn:
    """Map a step's own 0..1 progress into [lo, hi] of the whole export, prefixing its messages."""
    return lambda fraction, message: progress(lo + (hi - lo) * fraction, f"{label}: {message}")

DEFAULT_PROMPTS = ("The history of the city begins", "def fibonacci(n):")


@dataclass
class ExportOptions:
    """What `run_export` produces. Sparsity is a fraction (ignored for N:M structures).

    mask_artifact: export this stored What-if mask (store hash) instead of pruning afresh; method, structure,
    sparsity, propagation and layer_sparsity then describe how it was made. weights_artifact: the updated
    weights stored with it (SparseGPT), or None.
    layer_sparsity: per-decoder-layer overrides {layer: sparsity} (unstructured only).
    plan: a sparsity plan (`SparsityPlan.to_dict()`: sparsity per decoder layer x module kind) deciding every
    module's sparsity; `sparsity` is then ignored (the plan's global sparsity by parameters is reported).
    allocator: the allocator (`allocation.allocators.ALLOCATORS`) that made `plan`, or, without a plan, the one
    that makes it here for the global target `sparsity` (allocators reading dense statistics only; a
    "sensitivity" plan is exported from its table). None = uniform. Manifest and report record both.

    method ... allocator are the export's `Setting` (`setting`; `allocator` is its `allocation`), kept as flat
    fields because the dashboard writes these options with `dataclasses.asdict` into the export job, whose key
    and folder hash them; `from_dict` also takes the setting's own names.
    """

    method: str = "wanda"
    structure: str = "unstructured"
    sparsity: float = 0.5
    propagation: str = "pruned"
    layer_sparsity: dict[int, float] | None = None
    plan: dict | None = None
    allocator: str | None = None
    mask_artifact: str | None = None
    weights_artifact: str | None = None
    eval_corpora: tuple[str, ...] = ("wiki",)
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    max_new_tokens: int = 32
    curve_sparsities: tuple[float, ...] = ()  # extra unstructured points for the report's curve
    heatmap: bool = True  # second-order sensitivity map with its measured agreement (see _sensitivity_map)
    save_model: bool = False  # writes <out>/pruned-model
    recipe: bool = False
    lm_eval_tasks: tuple[str, ...] = ()
    lm_eval_limit: int | None = 20
    pdf: bool = False
    formats: tuple[str, ...] = ("html", "md", "json")

    @property
    def setting(self):
        """The pruning setting of these options (`setting.Setting`)."""
        from pruning_core.setting import Setting

        return Setting(method=self.method, structure=self.structure, sparsity=self.sparsity,
                       propagation=self.propagation, allocation=self.allocator, plan=self.plan,
                       layer_sparsity=self.layer_sparsity)

    @classmethod
    def for_setting(cls, setting, **options) -> "ExportOptions":
        """Options exporting `setting` (a `setting.Setting`); options: the other fields."""
        return cls(method=setting.method, structure=setting.structure, sparsity=setting.sparsity,
                   propagation=setting.propagation, allocator=setting.allocation, plan=setting.plan,
                   layer_sparsity=setting.layer_sparsity, **options)

    @classmethod
    def from_dict(cls, d) -> "ExportOptions":
        """Options from a JSON dict (lists for tuples); a setting's names ("allocation") or a nested "setting"
        are read too; unknown keys raise ConfigError naming the known ones."""
        from dataclasses import fields

        from pruning_core.setting import Setting

        d = dict(d)
        flat = {k: d.pop(k) for k in ("allocation", "setting") if k in d}
        if flat:
            names = ("method", "structure", "sparsity", "propagation", "allocator", "plan", "layer_sparsity")
            given = {k: d.pop(k) for k in names if k in d}
            setting = Setting.from_dict({**given, **(flat.get("setting") or {}),
                                         **({"allocation": flat["allocation"]} if "allocation" in flat else {})})
            d.update(method=setting.method, structure=setting.structure, sparsity=setting.sparsity,
                     propagation=setting.propagation, allocator=setting.allocation, plan=setting.plan,
                     layer_sparsity=setting.layer_sparsity)  # the setting's fields, as `for_setting` writes them
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"Unknown export options {unknown}; known: {', '.join(sorted(known))}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _options_setting(options: ExportOptions):
    """The export's `Setting`, checked (no evaluation corpus, a bad method or a plan clashing with per-layer
    sparsities fail here, before any model is loaded)."""
    from pruning_core.allocation.setting_plan import check_setting

    if not options.eval_corpora:
        raise ConfigError("No evaluation corpus given; choose at least one, e.g. wiki.")
    return check_setting(options.setting)


def stored_result(loaded, config, store, mask_artifact: str, weights_artifact: str | None = None):
    """The `PruneResult` of a stored mask (and weights), checked against `loaded` (names and shapes)."""
    from pruning_core.prune import result_from_masks

    masks = store.load_tensors(mask_artifact)
    weights = store.load_tensors(weights_artifact) if weights_artifact else None
    if config.method_spec.updates_weights and weights is None:
        raise ConfigError(f"The stored {config.method} mask has no updated weights with it; run the What-if "
                          "again to store them, or export a new setting.")
    return result_from_masks(loaded, config, masks, weights)


def _mask_source(options: ExportOptions) -> str:
    if options.mask_artifact:
        return f"stored What-if mask {options.mask_artifact[:12]}"
    return "pruned for this export"


def _sensitivity_map(loaded, protocol, options: ExportOptions, sparsity: float, progress,
                     store=None) -> tuple[dict | None, str]:
    """The heatmap of the report: the second-order estimate with its measured agreement, or (None, why not).

    The estimate's agreement with the exact metric is measured on `AGREEMENT_ROWS` exact rows (the first and
    last layers), so the report never shows a ranking without saying how far it can be trusted; with the
    dashboard's store, a map the Sensitivity page already computed for this protocol is reused.
    """
    from pruning_core.analysis.sensitivity import TRUSTED_AGREEMENT, compute_sensitivity

    if not options.heatmap:
        return None, "Sensitivity heatmap not computed (turned off)."
    try:
        out = compute_sensitivity(loaded, protocol, options.method, [sparsity], metrics=("fisher",),
                                  probe_windows=PROBE_WINDOWS, store=store, progress=progress,
                                  agreement_layers=AGREEMENT_ROWS)
    except PruneScopeError as exc:
        return None, f"Sensitivity heatmap not computed: {exc}"
    (sens,) = out["maps"]
    (measured,) = out["correlations"]
    note = (f"Heatmap: second-order estimate of each module's loss increase (nats/token) when it alone is pruned "
            f"with {options.method} (unstructured) at {sparsity:.0%}, from one backward pass per probe window. "
            f"Its rank agreement with the exact metric is {measured['spearman']:.2f} (Spearman) over a "
            f"{measured['scope']}.")
    if not measured["spearman"] >= TRUSTED_AGREEMENT:
        note += f" That is below {TRUSTED_AGREEMENT}: read the map as a rough picture, not as advice."
    return {**sens, "agreement": measured}, note


def _file_rows(out: Path, names: Sequence[str]) -> list[dict]:
    rows = []
    for name in names:
        path = out / name
        if path.is_dir():
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            rows.append({"name": name + "/", "bytes": size})
        elif path.is_file():
            rows.append({"name": name, "bytes": path.stat().st_size})
    return rows


def run_export(loaded, protocol, options: ExportOptions, out_dir, progress: ProgressFn | None = None,
               store=None, offload=None) -> dict:
    """Prune `loaded` with `options` (or take the stored What-if mask it names), evaluate with
    `evaluate.evaluate_setting`, and write every export file into `out_dir`.

    store: the `Store` holding a What-if mask artifact, and where the dense perplexity is reused from.
    offload: an `devices.placement.LayerOffload`: the pruning walks and the perplexities run layer by layer on
    its compute device (a GPU), the model staying on the CPU; the heatmap, generations and lm-eval stay there.
    Returns {"files": {name: path}, "report": report data dict, "manifest": manifest}. The model is left as it was.
    """
    from pruning_core import evaluate  # imported here: `prunescope --help` stays free of torch
    from pruning_core import claims
    from pruning_core.outputs.files import check_output_folder, folder_written_whole
    from pruning_core.outputs.lm_eval_bridge import compare_rows, evaluate_lm_eval
    from pruning_core.protocol import calibration_ids
    from pruning_core.prune import PruneConfig, prune_model

    progress = progress or no_progress
    from pruning_core.allocation.setting_plan import setting_config, setting_plan

    setting = _options_setting(options)
    config = setting_config(setting)
    for s in options.curve_sparsities:
        PruneConfig(options.method, "unstructured", s, options.propagation).validate()
    if options.mask_artifact and store is None:
        raise ConfigError("Exporting a stored What-if mask needs the store it was saved in.")
    final = check_output_folder(out_dir, "The export folder")  # a bad --out fails before any work
    # Read every corpus first: a bad corpus fails before any expensive work.
    progress(0.02, "reading corpora")
    calib = calibration_ids(loaded, protocol)
    evals = evaluate.evaluation_windows(loaded, protocol, options.eval_corpora)
    plan = setting_plan(loaded, protocol, setting, store, calib, _step_progress(progress, 0.02, 0.05, "plan"))
    config = setting_config(setting, loaded, plan)

    if options.mask_artifact:
        progress(0.05, f"loading the What-if mask {options.mask_artifact[:12]}")
        result = stored_result(loaded, config, store, options.mask_artifact, options.weights_artifact)
    else:
        progress(0.05, f"pruning: {options.method} {options.structure}")
        result = prune_model(loaded, calib, config, protocol.batch_size,
                             progress=_step_progress(progress, 0.05, 0.2, "pruning"), offload=offload)
    evaluation = evaluate.evaluate_setting(loaded, protocol, options.eval_corpora, result, eval_ids=evals,
                                           store=store, progress=sub_progress(progress, 0.2, 0.3), offload=offload)
    dense_ppl, pruned_ppl = evaluation.dense_ppl, evaluation.pruned_ppl
    allocation = plan.allocator if plan is not None else ("edited" if config.layer_sparsity else "uniform")
    points = [{"method": config.method, "structure": config.structure, "allocation": allocation,
               "target_sparsity": config.effective_sparsity, "sparsity": result.sparsity, "ppl": pruned_ppl,
               "prune_seconds": result.seconds, "propagation": config.propagation}]
    for i, s in enumerate(options.curve_sparsities):
        if abs(s - config.effective_sparsity) < 1e-9 and not config.structure_spec.is_nm:
            continue
        step = sub_progress(progress, 0.3 + 0.2 * i / len(options.curve_sparsities),
                            0.3 + 0.2 * (i + 1) / len(options.curve_sparsities))
        step(0.0, f"curve point {s:.0%}: pruning")
        extra = prune_model(loaded, calib, PruneConfig(options.method, "unstructured", s, options.propagation),
                            protocol.batch_size, offload=offload)
        curve = evaluate.evaluate_setting(loaded, protocol, options.eval_corpora, extra, dense=False, eval_ids=evals,
                                          progress=sub_progress(step, 0.5, 1.0), label=f"curve point {s:.0%}",
                                          offload=offload)
        points.append({"method": config.method, "structure": "unstructured", "allocation": "uniform",
                       "target_sparsity": s,
                       "sparsity": extra.sparsity, "prune_seconds": extra.seconds, "ppl": curve.pruned_ppl,
                       "propagation": options.propagation})
    protocol_dict = evaluate.protocol_record(protocol, evals, propagation=options.propagation)
    results = {"dense": {"ppl": dense_ppl}, "points": points, "protocol": protocol_dict}

    progress(0.5, "sensitivity heatmap (second-order estimate and its agreement)")
    sens, sens_note = _sensitivity_map(loaded, protocol, options, config.effective_sparsity, no_progress, store)

    progress(0.6, "sample generations")
    generations = claims.compare_generations(loaded, list(options.prompts), result.masks, result.weights,
                                             options.max_new_tokens) if options.prompts else []

    lm_eval = None
    if options.lm_eval_tasks:
        progress(0.7, "lm-eval (dense)")
        dense_lm = evaluate_lm_eval(loaded, options.lm_eval_tasks, options.lm_eval_limit)
        progress(0.8, "lm-eval (pruned)")
        pruned_lm = evaluate_lm_eval(loaded, options.lm_eval_tasks, options.lm_eval_limit, result.masks,
                                     result.weights)
        limit = options.lm_eval_limit if options.lm_eval_limit is not None else "all"
        lm_eval = {"note": f"lm-evaluation-harness on the in-memory model, limit {limit} documents per task; "
                           "word/byte perplexity are not the token-level perplexity above.",
                   "rows": compare_rows(dense_lm, pruned_lm), "dense": dense_lm["raw"], "pruned": pruned_lm["raw"]}

    progress(0.9, "writing files")
    # Everything goes into a fresh folder that replaces `out_dir` whole at the end: a killed or failed export
    # never leaves an old report beside a new mask, or a model folder with only its config.
    with folder_written_whole(out_dir, "The export folder") as out:
        data, paths, manifest, written = _write_export_files(
            out, loaded, protocol, options, config, plan, result, evaluation, allocation, results, sens, sens_note,
            generations, lm_eval, offload, progress)
    progress(1.0, "export done")
    files = {name: final / name for name in written}
    files.update({p.name: final / p.name for p in paths.values()})
    return {"files": files, "report": data, "manifest": manifest}


def _write_export_files(out: Path, loaded, protocol, options: ExportOptions, config, plan, result, evaluation,
                        allocation: str, results: dict, sens, sens_note, generations, lm_eval, offload,
                        progress: ProgressFn):
    """Write the export's files into `out` (a fresh folder); returns (report data, report paths, manifest,
    names written besides the report)."""
    from pruning_core import claims
    from pruning_core.data import without_local_paths
    from pruning_core.export.report import export_report, per_layer_table
    from pruning_core.mask_files import manifest_info_for, save_masks, save_pruned_model
    from pruning_core.outputs.report import build_report
    from pruning_core.provenance import environment
    from pruning_core.prune import propagation_note
    from pruning_core.sizes.records import sizes_from_masks

    dense_ppl, pruned_ppl = evaluation.dense_ppl, evaluation.pruned_ppl
    protocol_dict = results["protocol"]
    # Files name a user's corpus by its file name and sha256, never the folder it lies in on this machine.
    corpora = [protocol.calib, *options.eval_corpora]
    manifest_info = without_local_paths(manifest_info_for(loaded, result, protocol), corpora)
    manifest = save_masks(result.masks, out, manifest_info)
    written = ["masks.safetensors", "manifest.json"]
    if options.save_model:
        save_pruned_model(loaded, result, out / "pruned-model",
                          metadata={"manifest": "../manifest.json", "ppl": pruned_ppl, "protocol": protocol_dict})
        written.append("pruned-model")
    recipe_how = None
    if options.recipe:
        from pruning_core.outputs.recipe import write_recipe

        _, recipe_how = write_recipe(loaded, config, out)
        written.append("recipe.yaml")
    if lm_eval is not None:
        write_json(out / "lm_eval.json", lm_eval)
        written.append("lm_eval.json")

    kernel_speed = None
    if offload is not None and config.structure == "2:4":
        # On a GPU the 2:4 speed claim becomes a measurement: the same pruned model dense and on the sparse
        # tensor cores, or the sentence saying why this GPU cannot.
        from pruning_core.devices.sparse_kernels import measure_two_four_speed

        progress(0.92, "timing the 2:4 mask on the GPU's sparse kernels")
        kernel_speed = measure_two_four_speed(loaded, result.masks, offload.compute, result.weights)
    describe = loaded.describe()
    n_layers = len(loaded.adapter.decoder_layers(loaded.model))
    data = {
        "setting": {"model": loaded.name, "source": loaded.source, "fingerprint": loaded.fingerprint,
                    "method": config.method, "structure": config.structure, "sparsity": config.effective_sparsity,
                    "measured_sparsity": result.sparsity, "propagation": config.propagation,
                    "propagation_note": propagation_note(config.propagation),
                    "layer_sparsity": config.layer_sparsity, "allocator": allocation,
                    "plan": plan.to_dict() if plan is not None else None,
                    "plan_digest": plan.digest() if plan is not None else None,
                    "mask_source": _mask_source(options),
                    "weights_updated": result.weights is not None},
        "module_sizes": module_sizes(loaded),
        "ppl": {"dense": dense_ppl, "pruned": pruned_ppl},
        "evaluation": evaluation.to_dict(),
        "sizes": sizes_from_masks(loaded, result.masks, config.structure, result.weights),
        "speed_note": " ".join(filter(None, (claims.speed_sentence(config.structure,
                                                                   (kernel_speed or {}).get("measured")),
                                              (kernel_speed or {}).get("reason")))),
        "kernel_speed": kernel_speed,
        "results": results,
        "sensitivity": sens,
        "sensitivity_note": sens_note,
        "per_layer": per_layer_table(loaded.adapter, result.per_module_sparsity, n_layers),
        "generations": generations,
        "lm_eval": lm_eval,
        "files": _file_rows(out, written),
        "recipe_validation": recipe_how,
        "protocol": protocol_dict,
        "env": environment(),
        "model": describe,
    }
    data = without_local_paths(data, corpora)
    paths = build_report(export_report(data), out, formats=options.formats, pdf=options.pdf)
    return data, paths, manifest, written


def run_export_job(spec: dict, store, progress: ProgressFn) -> dict:
    """Job entry (`jobs.JOB_KINDS["export"]`): prune (or take a stored What-if mask), evaluate and write the
    export files outside the page; the dense perplexity is reused from `store` when measured before.

    spec = {"model", "protocol" (Protocol dict), "options" (ExportOptions fields; lists for tuples), "out_dir"}.
    Returns {"folder", "report"}. A cancelled export leaves a partial folder, rewritten by the next run.
    """
    from pruning_core.models import load_model
    from pruning_core.protocol import Protocol

    for name in ("model", "protocol", "options", "out_dir"):
        if name not in spec:
            raise ConfigError(f"The export job spec lacks '{name}'.")
    options = ExportOptions.from_dict(spec["options"])
    loaded = load_model(spec["model"])
    outcome = run_export(loaded, Protocol(**spec["protocol"]).validate(), options, spec["out_dir"], progress,
                         store=store)
    return {"folder": str(spec["out_dir"]), "report": outcome["report"]}


def run_apply_mask(loaded, mask_dir, eval_corpora: Sequence[str] = (), seqlen: int | None = None,
                   eval_windows: int | None = None, save_model: str | None = None) -> dict:
    """Apply the mask folder permanently to `loaded` (freshly loaded), measure, and optionally evaluate/save."""
    from pruning_core import evaluate
    from pruning_core.mask_files import _drop_quantization_config, apply_mask_dir
    from pruning_core.outputs.files import check_output_folder, folder_written_whole
    from pruning_core.protocol import Protocol

    if save_model:
        check_output_folder(save_model, "--save-model")  # before any work: never a false "wrote"
    applied = apply_mask_dir(loaded, mask_dir, permanent=True)
    manifest = applied["manifest"]
    summary = {"model": loaded.name, "fingerprint": loaded.fingerprint, "method": manifest.get("method"),
               "structure": manifest.get("structure"), "allocator": manifest.get("allocator"),
               "plan_digest": manifest.get("plan_digest"), "measured_sparsity": applied["sparsity"]["overall"],
               "manifest_sparsity": manifest.get("measured_sparsity", {}).get("overall"),
               "weights_updated": manifest.get("weights_updated"), "ppl": {}, "warning": applied["warning"]}
    if eval_corpora:
        known = {k: v for k, v in (manifest.get("protocol") or {}).items() if k in Protocol.__dataclass_fields__}
        protocol = Protocol(**known)
        protocol = Protocol(**{**protocol.to_dict(), **({"seqlen": seqlen} if seqlen else {}),
                               **({"eval_windows": eval_windows} if eval_windows else {})}).validate()
        # The mask is already in the weights: evaluate the model as it is (no dense model to compare with).
        evaluation = evaluate.evaluate_setting(loaded, protocol, list(eval_corpora), evaluate.IN_PLACE, dense=False)
        summary["ppl"] = evaluation.pruned_ppl
        summary["eval_windows_used"] = evaluation.windows
    if save_model:
        _drop_quantization_config(loaded.model)
        with folder_written_whole(save_model) as folder:
            loaded.model.save_pretrained(str(folder), safe_serialization=True)
            loaded.tokenizer.save_pretrained(str(folder))
        summary["saved_model"] = str(save_model)
    return summary

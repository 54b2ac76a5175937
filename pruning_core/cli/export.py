"""`prunescope export` and `prunescope apply-mask`: the export pipeline (`pruning_core.export.pipeline`), headless.

Where the zeros go: a plain `--sparsity` prunes every module alike; `--allocation NAME` makes the plan of that
allocator for the global target `--sparsity`, as `prunescope sweep --allocation` does (owl from the cached
dense statistics; sensitivity from `--sensitivity FILE` or the exact map at the sweep's map sparsities, reused
from the store); `--plan FILE` prunes with a plan made elsewhere (`SparsityPlan.to_dict()` JSON, or a file
holding one: an export's manifest.json or report.json, a budget.json frontier that carries its plan).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from pruning_core.cli.common import (
    ConsoleProgress,
    _csv,
    _floats,
    add_protocol_args,
    check_run_fits,
    load_model_from_args,
    offload_from_args,
    prepare_out_dir,
    protocol_from_args,
)
from pruning_core.cli.gguf_export import add_gguf_args, gguf_choice, gguf_line
from pruning_core.errors import ConfigError
from pruning_core.export.pipeline import DEFAULT_PROMPTS, ExportOptions, run_apply_mask, run_export


def add_export(sub) -> None:
    p = sub.add_parser("export", help="prune at one setting and write masks, manifest and an evaluation report")
    add_protocol_args(p)
    p.add_argument("--method", default="wanda", help="magnitude, wanda or sparsegpt")
    p.add_argument("--structure", default="unstructured", help="unstructured, 2:4 or 4:8")
    p.add_argument("--sparsity", type=float, default=None,
                   help="target fraction of zeros (unstructured; default 0.5); with --allocation the global target "
                        "counted over parameters")
    p.add_argument("--allocation", default=None,
                   help="allocator giving each layer/module its sparsity for the global --sparsity: uniform, owl, "
                        "sensitivity (unstructured only)")
    p.add_argument("--sensitivity", default=None, metavar="FILE",
                   help="sensitivity_all.json of `prunescope sensitivity` for --allocation sensitivity; without it "
                        "the exact map is computed (reused from the store)")
    p.add_argument("--plan", default=None, metavar="FILE",
                   help="a sparsity plan JSON ({kinds, values, allocator, ...} as SparsityPlan.to_dict() writes it), "
                        "or a manifest.json, report.json or budget.json holding one; fixes every module's sparsity")
    p.add_argument("--propagation", default="pruned", choices=["pruned", "dense"])
    p.add_argument("--eval", default="wiki", help="comma-separated evaluation corpora")
    p.add_argument("--prompt", action="append", default=None,
                   help="prompt for the sample generations (repeatable; default two built-in prompts)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per prompt")
    p.add_argument("--curve-sparsities", default="", help="extra unstructured sparsities for the report's curve")
    p.add_argument("--no-heatmap", action="store_true", help="skip the sensitivity heatmap (second-order estimate with its measured agreement)")
    p.add_argument("--save-model", action="store_true", help="also write the pruned model to OUT/pruned-model")
    p.add_argument("--recipe", action="store_true", help="also write an llm-compressor recipe.yaml")
    p.add_argument("--lm-eval", default="", help="lm-eval tasks, comma-separated; 'local' = the two offline tasks")
    p.add_argument("--lm-eval-limit", type=int, default=20, help="documents per lm-eval task")
    p.add_argument("--pdf", action="store_true", help="also print report.pdf with headless Chromium")
    add_gguf_args(p)  # with --export gguf: OUT/gguf/<name>-<type>.gguf, the pruned model for llama.cpp
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(handler=cmd_export)


def _export_spec(model: str, protocol, options) -> dict:
    """The export job's spec (as the dashboard submits it) for its estimate: model, protocol and options as JSON."""
    from dataclasses import asdict

    as_json = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()}
    if as_json.get("layer_sparsity"):
        as_json["layer_sparsity"] = {str(k): float(v) for k, v in as_json["layer_sparsity"].items()}
    return {"model": model, "protocol": protocol.to_dict(), "options": as_json}


def cmd_export(args) -> int:
    from pruning_core.outputs.lm_eval_bridge import parse_tasks

    allocator, plan = _plan_choice(args)  # bad plan input fails before the model is loaded
    from pruning_core.allocation.setting_plan import check_setting
    from pruning_core.setting import Setting

    setting = Setting(method=args.method, structure=args.structure,
                      sparsity=0.5 if args.sparsity is None else args.sparsity, propagation=args.propagation,
                      plan=plan, allocation=None if allocator == "sensitivity" else allocator)
    check_setting(setting)  # a bad setting fails before the model is loaded
    gguf_type, gguf_fallback = gguf_choice(args)  # so does a GGUF type the gguf package cannot write
    options = ExportOptions.for_setting(
        setting, eval_corpora=_csv(args.eval), prompts=tuple(args.prompt) if args.prompt else DEFAULT_PROMPTS,
        max_new_tokens=args.max_new_tokens, curve_sparsities=_floats(args.curve_sparsities),
        heatmap=not args.no_heatmap, save_model=args.save_model, recipe=args.recipe,
        lm_eval_tasks=tuple(parse_tasks(args.lm_eval)) if args.lm_eval.strip() else (),
        lm_eval_limit=args.lm_eval_limit, pdf=args.pdf, gguf_type=gguf_type, gguf_fallback=gguf_fallback)
    if options.lm_eval_limit is not None and options.lm_eval_limit < 1:
        raise ConfigError("--lm-eval-limit must be a positive number of documents.")
    if not options.eval_corpora:
        raise ConfigError("No evaluation corpus given; choose at least one, e.g. wiki.")
    from pruning_core.store import Store

    protocol = protocol_from_args(args)
    out = prepare_out_dir(args.out)
    progress = ConsoleProgress()
    loaded = load_model_from_args(args, progress)
    start = time.perf_counter()
    store = Store()
    if allocator == "sensitivity":  # the pipeline makes statistics-only plans; this one reads a map
        options = replace(options, plan=_sensitivity_plan(args, loaded, protocol, options, store, progress))
    check_run_fits(args, "export", _export_spec(args.model, protocol, options), loaded, store)
    # The store gives back a dense perplexity measured before (by a sweep, what-if or export).
    outcome = run_export(loaded, protocol, options, out, progress, store=store, offload=offload_from_args(args))
    data = outcome["report"]
    for corpus, dense in data["ppl"]["dense"].items():
        pruned = data["ppl"]["pruned"][corpus]
        print(f"{corpus}: perplexity dense {dense:.3f} -> pruned {pruned:.3f} ({100 * (pruned / dense - 1):+.1f} %)")
    if data["setting"].get("plan") is not None:
        from pruning_core.outputs.plan_section import allocation_summary

        planned = allocation_summary(data)["global_sparsity"]  # as the report's "Where the zeros are" says it
        print(f"plan by {data['setting']['allocator']} (digest {data['setting']['plan_digest'][:12]})"
              + (f": global sparsity {planned:.4f} by parameters" if planned is not None else ""))
    print(f"measured sparsity {data['setting']['measured_sparsity']:.4f}; finished in {time.perf_counter() - start:.1f} s")
    from pruning_core.claims import setting_claims

    gains = setting_claims(data.get("sizes"), data["setting"]["structure"])  # measured files, as the report says
    for sentence in (gains["size"], data.get("speed_note")):
        if sentence:
            print(sentence)
    for name, path in sorted(outcome["files"].items()):
        if path.suffix == ".gguf":
            print(gguf_line(path) + " (zeros stored as zeros: llama.cpp keeps no sparse form)")
            continue
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
        print(f"wrote {path} ({size:,} bytes)")
    return 0


def _plan_choice(args) -> tuple[str | None, dict | None]:
    """(allocator name or None, plan dict or None) from --allocation / --plan, checked for form; ConfigError
    names the conflict or the bad file."""
    from pruning_core.allocation.allocators import get_allocator
    from pruning_core.masks import parse_structure

    if args.plan and args.allocation:
        raise ConfigError("Give --allocation (make a plan here) or --plan FILE (use a plan made elsewhere), not both.")
    if args.plan:
        if args.sparsity is not None:
            raise ConfigError("--plan fixes every module's sparsity (its global sparsity is reported); leave out "
                              "--sparsity, or use --allocation NAME --sparsity S to make a plan for a target.")
        return None, _read_plan(args.plan)
    if args.sensitivity and not args.allocation:
        raise ConfigError("--sensitivity is read by --allocation sensitivity; add it, or leave out --sensitivity.")
    if not args.allocation:
        return None, None
    name = get_allocator(args.allocation).name  # an unknown name lists the known ones
    if args.sensitivity and name != "sensitivity":
        raise ConfigError(f"--sensitivity is read by --allocation sensitivity, not '{name}'; leave it out.")
    if name != "uniform" and parse_structure(args.structure).is_nm:
        raise ConfigError(f"--allocation {name} sets per-module sparsities, but {args.structure} fixes them; use "
                          "--structure unstructured, or --plan FILE with 0 for the modules to keep dense.")
    return name, None


def _read_plan(path: str) -> dict:
    """The plan dict (`SparsityPlan.to_dict()`) in the JSON file `path`: the plan itself, or a document holding
    one ("plan" of a manifest.json or sweep point, "setting.plan" of a report.json, "frontier.plan" of a
    budget.json)."""
    from pruning_core.plan import SparsityPlan

    file = Path(path).expanduser()
    try:
        document = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot read the plan file '{path}' ({exc}); give a JSON sparsity plan with 'kinds' and "
                          "'values' (layers x kinds).") from None
    if not isinstance(document, dict):
        raise ConfigError(f"'{path}' is not a sparsity plan; give a JSON object with 'kinds' and 'values'.")
    if "frontier" in document:  # budget.json
        frontier = document["frontier"]
        spec = document.get("spec") or {}
        if not frontier:
            raise ConfigError(f"'{path}' found no sparsity within its budget, so it holds no plan to export.")
        if not frontier.get("plan"):
            raise ConfigError(f"The frontier in '{path}' records no plan table; make the same plan with "
                              f"--allocation {spec.get('allocation', 'uniform')} --sparsity {frontier['sparsity']:g} "
                              f"--method {spec.get('method', 'wanda')} and the search's calibration settings.")
        document = frontier["plan"]
    elif "kinds" not in document and isinstance(document.get("setting"), dict):  # report.json
        document = document["setting"].get("plan") or {"allocator": document["setting"].get("allocator")}
    elif "kinds" not in document and "plan" in document:  # manifest.json, a sweep point
        document = document["plan"] or {"allocator": document.get("allocator")}
    if "kinds" not in document and "allocator" in document:
        raise ConfigError(f"'{path}' records no plan table (its setting: {document['allocator']}); give a file with "
                          "the plan itself ('kinds' and 'values')" + (", or export with --sparsity."
                                                                      if document["allocator"] == "uniform" else "."))
    SparsityPlan.from_dict(document)  # names what is missing or out of range
    return document


def _sensitivity_plan(args, loaded, protocol, options, store, progress) -> dict:
    """The "sensitivity" allocator's plan for the global target `options.sparsity`, as a sweep makes it: from
    --sensitivity FILE, else the exact map at the sweep's map sparsities (reused from, and kept in, `store`)."""
    from pruning_core.allocation.allocators import AllocationInputs, make_plan

    if args.sensitivity:
        from pruning_core.cli.sweep import _read_sensitivity

        sensitivity = _read_sensitivity(args.sensitivity)
    else:
        from pruning_core.analysis.sensitivity import compute_sensitivity
        from pruning_core.analysis.sweep import SweepSpec

        sparsities = SweepSpec(methods=(options.method,), sparsities=(options.sparsity,)).map_sparsities()
        progress(0.0, f"exact sensitivity map of {options.method} at "
                      f"{', '.join(f'{s:.0%}' for s in sparsities)} for the plan")
        sensitivity = compute_sensitivity(loaded, protocol, options.method, sparsities, metrics=("exact",),
                                          store=store, progress=progress)
    return make_plan("sensitivity", AllocationInputs(loaded, sensitivity=sensitivity), options.sparsity).to_dict()


def add_apply_mask(sub) -> None:
    p = sub.add_parser("apply-mask", help="apply an exported mask to a freshly loaded model and verify it")
    p.add_argument("--model", default="embedded", help="'embedded', a model folder, a .gguf file or a hub id")
    p.add_argument("--mask", required=True, help="folder with masks.safetensors and manifest.json")
    p.add_argument("--eval", default="", help="comma-separated corpora to measure perplexity on (optional)")
    p.add_argument("--seqlen", type=int, default=None, help="evaluation window (default: the manifest's protocol)")
    p.add_argument("--eval-windows", type=int, default=None, help="evaluation windows (default: the manifest's)")
    p.add_argument("--save-model", default=None, help="write the masked model to this folder (save_pretrained)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub")
    p.set_defaults(handler=cmd_apply_mask)


def cmd_apply_mask(args) -> int:
    progress = ConsoleProgress()
    loaded = load_model_from_args(args, progress)
    summary = run_apply_mask(loaded, args.mask, _csv(args.eval), args.seqlen, args.eval_windows, args.save_model)
    print(f"applied {args.mask} to {summary['model']} (fingerprint {summary['fingerprint']} verified, shapes match)")
    manifest_sparsity = summary["manifest_sparsity"]
    print(f"measured sparsity {summary['measured_sparsity']:.4f}" + (
        f" (manifest: {manifest_sparsity:.4f})" if isinstance(manifest_sparsity, (int, float)) else ""))
    if summary.get("warning"):
        print(f"warning: {summary['warning']}")
    if summary["weights_updated"]:
        print("note: this mask comes from a method that also updated weights; the mask alone does not reproduce "
              "its perplexity (use the exported pruned model).")
    for corpus, ppl in summary["ppl"].items():
        print(f"{corpus}: perplexity {ppl:.3f}")
    if summary.get("saved_model"):
        print(f"wrote {summary['saved_model']}")
    return 0

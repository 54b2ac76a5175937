"""`prunescope export` and `prunescope apply-mask`: the export pipeline (`pruning_core.outputs.pipeline`), headless."""

from __future__ import annotations

import time

from pruning_core.cli.common import (
    ConsoleProgress,
    _csv,
    _floats,
    add_protocol_args,
    load_model_from_args,
    prepare_out_dir,
    protocol_from_args,
)
from pruning_core.errors import ConfigError
from pruning_core.outputs.pipeline import DEFAULT_PROMPTS, ExportOptions, run_apply_mask, run_export


def add_export(sub) -> None:
    p = sub.add_parser("export", help="prune at one setting and write masks, manifest and an evaluation report")
    add_protocol_args(p)
    p.add_argument("--method", default="wanda", help="magnitude, wanda or sparsegpt")
    p.add_argument("--structure", default="unstructured", help="unstructured, 2:4 or 4:8")
    p.add_argument("--sparsity", type=float, default=0.5, help="target fraction of zeros (unstructured)")
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
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(handler=cmd_export)


def cmd_export(args) -> int:
    from pruning_core.outputs.lm_eval_bridge import parse_tasks

    options = ExportOptions(
        method=args.method, structure=args.structure, sparsity=args.sparsity, propagation=args.propagation,
        eval_corpora=_csv(args.eval), prompts=tuple(args.prompt) if args.prompt else DEFAULT_PROMPTS,
        max_new_tokens=args.max_new_tokens, curve_sparsities=_floats(args.curve_sparsities),
        heatmap=not args.no_heatmap, save_model=args.save_model, recipe=args.recipe,
        lm_eval_tasks=tuple(parse_tasks(args.lm_eval)) if args.lm_eval.strip() else (),
        lm_eval_limit=args.lm_eval_limit, pdf=args.pdf)
    if options.lm_eval_limit is not None and options.lm_eval_limit < 1:
        raise ConfigError("--lm-eval-limit must be a positive number of documents.")
    from pruning_core.execution.store import Store
    from pruning_core.outputs.pipeline import export_config

    export_config(options)  # a bad setting fails before the model is loaded
    protocol = protocol_from_args(args)
    out = prepare_out_dir(args.out)
    progress = ConsoleProgress()
    loaded = load_model_from_args(args, progress)
    start = time.perf_counter()
    # The store gives back a dense perplexity measured before (by a sweep, what-if or export).
    outcome = run_export(loaded, protocol, options, out, progress, store=Store())
    data = outcome["report"]
    for corpus, dense in data["ppl"]["dense"].items():
        pruned = data["ppl"]["pruned"][corpus]
        print(f"{corpus}: perplexity dense {dense:.3f} -> pruned {pruned:.3f} ({100 * (pruned / dense - 1):+.1f} %)")
    print(f"measured sparsity {data['setting']['measured_sparsity']:.4f}; finished in {time.perf_counter() - start:.1f} s")
    for name, path in sorted(outcome["files"].items()):
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
        print(f"wrote {path} ({size:,} bytes)")
    return 0


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
    print(f"measured sparsity {summary['measured_sparsity']:.4f} (manifest: {summary['manifest_sparsity']:.4f})")
    if summary["weights_updated"]:
        print("note: this mask comes from a method that also updated weights; the mask alone does not reproduce "
              "its perplexity (use the exported pruned model).")
    for corpus, ppl in summary["ppl"].items():
        print(f"{corpus}: perplexity {ppl:.3f}")
    if summary.get("saved_model"):
        print(f"wrote {summary['saved_model']}")
    return 0

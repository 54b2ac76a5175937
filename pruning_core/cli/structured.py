"""`prunescope structured`: remove heads / MLP channels / layers at several ratios, evaluate, time, save.

Writes DIR/structured.json (`structured.run.run_structured`'s result: per ratio the measured fraction of
decoder parameters removed, parameters, perplexity, the size and speed sentences, widths per layer) and, with
--save-model, DIR/structured-<ratio>/ (a Hugging Face folder, reloaded and re-evaluated before it is reported);
with --report, DIR/report-<ratio>/report.{html,md,json} (`outputs.structured_export.structured_report_data`).
--allocation spreads each ratio over the layers (uniform, owl, sensitivity; `structured.run.allocation_plans`).
"""

from __future__ import annotations

import argparse

from pruning_core.cli.common import (
    store_from_args,
    ConsoleProgress,
    _csv,
    _floats,
    add_protocol_args,
    check_run_fits,
    load_model_from_args,
    protocol_from_args,
    write_json,
)
from pruning_core.cli.gguf_export import add_gguf_args, export_saved_folder, gguf_choice, gguf_line
from pruning_core.errors import ConfigError
from pruning_core.outputs.files import check_output_folder, folder_written_whole, relocated


def add_structured(sub) -> None:
    p = sub.add_parser("structured", help="remove heads/channels/layers: a smaller, measured-faster model")
    add_protocol_args(p)
    p.add_argument("--eval", default="wiki", help="comma-separated evaluation corpora")
    p.add_argument("--units", default="heads,channels", help="any of heads, channels, layers (layers mixed with widths: see --layer-share)")
    p.add_argument("--layer-share", type=float, default=0.5,
                   help="with layers and heads/channels mixed, the share of each ratio removed as whole layers "
                        "(whole layers speed up batch-1 decoding most; widths cost less quality)")
    p.add_argument("--ratios", default="0.1,0.2,0.3", help="comma-separated fractions of decoder parameters")
    p.add_argument("--score", default="obs", help="unit score: magnitude, wanda_sp, flap or obs")
    p.add_argument("--compensate", action=argparse.BooleanOptionalAction, default=True,
                   help="refit the remaining weights from the calibration windows (default on)")
    p.add_argument("--damping", type=float, default=None,
                   help="fixed refit shrinkage as a fraction of mean diag (default: chosen by cross-validation)")
    p.add_argument("--head-mode", default="query", choices=["query", "group"],
                   help="query: query heads within every key/value group; group: whole key/value groups")
    p.add_argument("--allocation", default="uniform",
                   help="how each ratio is spread over the layers: uniform, owl (layers with more activation "
                        "outliers lose less) or sensitivity (from a sensitivity map; heads/channels only)")
    p.add_argument("--sensitivity", default=None,
                   help="sensitivity JSON for --allocation sensitivity (default: this model's maps in the store)")
    p.add_argument("--sensitivity-method", default="wanda",
                   help="the method of the stored sensitivity maps --allocation sensitivity reads")
    p.add_argument("--speed", action="store_true", help="time dense and pruned on this machine (prefill, decode)")
    p.add_argument("--speed-repeats", type=int, default=3, help="timed runs per phase (the fastest is reported)")
    p.add_argument("--decode-tokens", type=int, default=32, help="new tokens per decode run")
    p.add_argument("--prefill-tokens", type=int, default=512, help="tokens of the prefill pass")
    p.add_argument("--save-model", action="store_true", help="write each pruned model as a Hugging Face folder")
    p.add_argument("--report", action="store_true",
                   help="write a report per ratio (DIR/report-<ratio>/report.html, .md, .json) with the measured "
                        "sizes and speed")
    p.add_argument("--no-store", action="store_true", help="do not use or fill the results store")
    add_gguf_args(p)  # with --export gguf, each ratio's folder is also written as DIR/gguf-<ratio>/<name>-<type>.gguf
    p.add_argument("--out", required=True, help="output folder (structured.json)")
    p.set_defaults(handler=cmd_structured)


def cmd_structured(args) -> int:
    from pruning_core.structured.run import StructuredSpec, run_structured

    ratios = _floats(args.ratios)
    spec = StructuredSpec(model=args.model, protocol=protocol_from_args(args), units=_csv(args.units),
                          ratios=ratios, score=args.score, compensate=args.compensate, damping=args.damping,
                          head_mode=args.head_mode, layer_share=args.layer_share, eval_corpora=_csv(args.eval), speed=args.speed,
                          allocation=args.allocation, sensitivity=args.sensitivity,
                          sensitivity_method=args.sensitivity_method,
                          speed_settings={"repeats": args.speed_repeats, "decode_tokens": args.decode_tokens,
                                          "prefill_tokens": args.prefill_tokens}).validate()
    if len(set(ratios)) != len(ratios):
        raise ConfigError(f"--ratios {args.ratios} repeats a value; give each ratio once.")
    gguf_type, gguf_fallback = gguf_choice(args)  # a type the gguf package cannot write fails before loading
    final = check_output_folder(args.out, "--out")  # a user's folder is refused before any work
    progress = ConsoleProgress()
    loaded = load_model_from_args(args, progress)
    if gguf_type:  # a family llama.cpp cannot run fails before pruning
        from pruning_core.gguf.architecture import check_family

        check_family(loaded)
    store = store_from_args(args)
    check_run_fits(args, "structured", spec.to_dict(), loaded, store)  # a run that cannot fit stops here
    # Written in a fresh folder that replaces --out whole: a killed run never leaves an old model beside a new
    # structured.json, or a model folder with only its config. A GGUF file is made from the saved (and verified)
    # smaller folder, so --export gguf saves it too.
    with folder_written_whole(final, "--out") as out:
        result = run_structured(spec, loaded=loaded, store=store, progress=progress,
                                save_dir=out if args.save_model or gguf_type else None)
        if gguf_type:
            for point in result["points"]:
                record = export_saved_folder(point["saved"]["folder"], out / f"gguf-{point['ratio']:g}",
                                             f"{loaded.name}-structured-{point['ratio']:g}", gguf_type, gguf_fallback)
                point["gguf"] = {key: record[key] for key in ("path", "bytes", "type", "tensor_types", "fallbacks")}
                point["gguf"]["architecture"] = record["architecture"]["name"]
        result = relocated(result, out, final)
        write_json(out / "structured.json", result)
        if args.report:
            from pruning_core.outputs.report import build_report
            from pruning_core.structured.export import structured_report_data

            for point in result["points"]:
                build_report(structured_report_data(result, point), out / f"report-{point['ratio']:g}")
    _print_table(result)
    for point in result["points"]:
        if point.get("gguf"):
            print(gguf_line(point["gguf"]["path"]) + "".join(f"; {f['reason']}" for f in point["gguf"]["fallbacks"]))
    print(f"wrote {final / 'structured.json'}")
    return 0


def _print_table(result: dict) -> None:
    from pruning_core.claims import structured_claims

    corpora = list(result["dense_ppl"])
    print("ratio  removed  parameters   " + "  ".join(f"{c:>10}" for c in corpora) + "  speed (fp32)")
    print("dense  0.0 %    " + f"{result['model']['parameters']:>11,}  "
          + "  ".join(f"{result['dense_ppl'][c]:10.3f}" for c in corpora))
    for point in result["points"]:
        speed = point.get("speed") or {}
        ratios = (speed.get("ratios") or {}).get("float32") or {}
        speed_text = ", ".join(f"{label} {value:.2f}x" for label, value in ratios.items()) or "not measured"
        print(f"{point['ratio']:<5g}  {point['measured_ratio'] * 100:5.1f} %  "
              f"{point['parameters']['model_after']:>11,}  "
              + "  ".join(f"{point['ppl'][c]:10.3f}" for c in corpora) + f"  {speed_text}")
        size = structured_claims(point.get("sizes"), point.get("speed"))["size"]  # measured files, as reports say
        if size:
            print(f"       {size}")
        if point.get("saved"):
            saved = point["saved"]
            print(f"       saved {saved['folder']} ({saved['file_bytes']:,} bytes), reloaded perplexity within "
                  f"{saved['max_relative_gap']:.1e} relative")

"""`prunescope quantize`: weight-only quantization (GPTQ or round to nearest) of the dense model, a pruned mask, a
structurally pruned folder, or SparseGPT pruning and quantization in one pass; evaluated, exported, measured.

Writes DIR/quantize.json (`quantization.run.run_quantize`'s record: the setting, bytes per format measured on the
written files, perplexity per corpus, the protocol, the checks of the written folder) and, with --export
compressed-tensors (the default), DIR/model/ (a compressed-tensors pack-quantized folder that transformers and
vLLM load). The folder is written whole: a failure leaves DIR as it was.
"""

from __future__ import annotations

from pruning_core.cli.common import (
    ConsoleProgress, _csv, add_protocol_args, check_run_fits, protocol_from_args, store_from_args,
)
from pruning_core.errors import ConfigError

MODEL_FOLDER = "model"
EXPORTS = ("compressed-tensors", "none")


def add_quantize(sub) -> None:
    p = sub.add_parser("quantize", help="weight-only quantization (GPTQ, RTN): a smaller file a runtime loads")
    add_protocol_args(p)
    p.add_argument("--eval", default="wiki", help="comma-separated evaluation corpora")
    p.add_argument("--method", default="gptq", choices=["gptq", "rtn"],
                   help="gptq (rounds column by column, compensating with the inverse Hessian) or rtn (round to "
                        "nearest, no data)")
    p.add_argument("--bits", type=int, default=4, help="integer width, 2-8 (8, 4 or 3 usually)")
    p.add_argument("--group-size", default="64", help="input weights per scale (64, 32...) or 'channel'")
    p.add_argument("--asymmetric", action="store_true", help="an integer zero point per group (default symmetric)")
    p.add_argument("--scale-dtype", default="float16", choices=["float16", "bfloat16"],
                   help="16-bit type of the scales and of the unquantized tensors in the written folder")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--mask", default=None, metavar="DIR",
                       help="quantize a pruned model: a mask folder written by `prunescope export` (zeros stay zero)")
    start.add_argument("--structured", default=None, metavar="DIR",
                       help="quantize a structurally pruned model folder (written by `prunescope structured "
                            "--save-model`); it replaces --model")
    start.add_argument("--prune", default=None, metavar="sparsegpt:S",
                       help="prune with SparseGPT in the same sweep, e.g. sparsegpt:0.5 or sparsegpt:2:4 (gptq only)")
    p.add_argument("--export", default="compressed-tensors", choices=EXPORTS,
                   help="write DIR/model as compressed-tensors packed integers (none: measure it, then remove it)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip unpacking and reloading the written folder (its perplexity check)")
    p.add_argument("--no-store", action="store_true", help="do not use or fill the results store")
    p.add_argument("--out", required=True, help="output folder (quantize.json, model/)")
    p.set_defaults(handler=cmd_quantize)


def cmd_quantize(args) -> int:
    from pruning_core.models import load_model
    from pruning_core.outputs.files import check_output_folder, folder_written_whole, write_json
    from pruning_core.quantization.run import QuantizeSpec, run_quantize

    if args.prune and args.method != "gptq":
        raise ConfigError("--prune prunes in GPTQ's sweep; use it with --method gptq.")
    spec = QuantizeSpec(model=args.model, protocol=protocol_from_args(args), method=args.method, bits=args.bits,
                        group_size=args.group_size, symmetric=not args.asymmetric, scale_dtype=args.scale_dtype,
                        mask=args.mask, structured=args.structured, prune=args.prune, eval_corpora=_csv(args.eval),
                        verify=not args.no_verify).validate()
    check_output_folder(args.out, "--out")  # refused before the model is loaded
    progress = ConsoleProgress()
    loaded = load_model(spec.source, trust_remote_code=args.trust_remote_code, progress=progress)
    store = store_from_args(args)
    check_run_fits(args, "quantize", spec.to_dict(), loaded, store)  # a run that cannot fit stops here
    with folder_written_whole(args.out, "--out") as out:
        model_dir = out / MODEL_FOLDER if args.export == "compressed-tensors" else None
        # With a folder to write the point is computed (and stored) afresh; without one a stored point is reused.
        record = run_quantize(spec, loaded=loaded, store=store, progress=progress, out_dir=model_dir)
        document = {**record, "spec": spec.to_dict(),
                    "folder": MODEL_FOLDER if model_dir is not None else None}
        write_json(out / "quantize.json", document)
    _print_summary(document)
    print(f"wrote {args.out}/quantize.json" + (f" and {args.out}/{MODEL_FOLDER}/" if model_dir is not None else ""))
    return 0


def _print_summary(record: dict) -> None:
    print(record["setting"]["label"])
    for corpus, value in record["ppl"].items():
        dense = record["dense_ppl"].get(corpus)
        change = f" ({value / dense - 1:+.1%} against dense {dense:.3f})" if dense else ""
        print(f"  perplexity on {corpus}: {value:.3f}{change}")
    for fmt, size in record["bytes"].items():
        print(f"  {size['label']}: {size['weight_bytes']:,} bytes of weights ({size['total_bytes']:,} in all)")
    reload = (record.get("checks") or {}).get("reload")
    if reload:
        print(f"  reloaded with {reload['loaded_with']}: perplexity within {reload['max_relative_gap']:.2e} "
              "relative of the in-memory model")
    if record.get("note"):
        print(f"  note: {record['note']}")

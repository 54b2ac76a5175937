"""`prunescope quantize`: weight-only quantization (GPTQ or round to nearest) of the dense model, a pruned mask, a
structurally pruned folder, or SparseGPT pruning and quantization in one pass; evaluated, exported, measured.

Writes DIR/quantize.json (`quantization.run.run_quantize`'s record: the setting, bytes per format measured on the
written files, perplexity per corpus, the protocol, the checks of the written files) and the formats --export
names (comma-separated or repeated): compressed-tensors (the default) -> DIR/model/ (a pack-quantized folder that
transformers and vLLM load); gguf -> DIR/<model>-<TYPE>.gguf (llama.cpp), written from the quantized integers
where the scheme is a GGUF block type (4-bit groups of 32: Q4_0 symmetric, Q4_1 asymmetric; 8-bit groups of 32
symmetric: Q8_0), refused in one sentence otherwise unless --gguf-type asks for the dequantized weights re-rounded
(then labelled so). `--bits 16` writes the starting model unquantized in every 16-bit format: safetensors-16bit ->
DIR/model-16bit/, gguf -> DIR/<model>-F16.gguf. The folder is written whole: a failure leaves DIR as it was.
"""

from __future__ import annotations

from pruning_core.cli.common import (
    ConsoleProgress, _csv, add_protocol_args, check_run_fits, protocol_from_args, store_from_args,
)
from pruning_core.errors import ConfigError
from pruning_core.quantization.scheme import ACTORDERS


def add_quantize(sub) -> None:
    p = sub.add_parser("quantize", help="weight-only quantization (GPTQ, RTN): a smaller file a runtime loads")
    add_protocol_args(p)
    p.add_argument("--eval", default="wiki", help="comma-separated evaluation corpora")
    p.add_argument("--method", default="gptq", choices=["gptq", "rtn"],
                   help="gptq (rounds column by column, compensating with the inverse Hessian) or rtn (round to "
                        "nearest, no data)")
    p.add_argument("--bits", type=int, default=4,
                   help="integer width, 2-8 (8, 4 or 3 usually); 16 = not quantized, the 16-bit baseline in every "
                        "format")
    p.add_argument("--group-size", default="64", help="input weights per scale (64, 32...) or 'channel'")
    p.add_argument("--asymmetric", action="store_true", help="an integer zero point per group (default symmetric)")
    p.add_argument("--actorder", default="static", choices=list(ACTORDERS),
                   help="GPTQ's column order: static (columns by decreasing input energy, group scales from the "
                        "original weights; llm-compressor's default) or none (natural order, as the GPTQ paper); "
                        "rtn and --prune always use none")
    p.add_argument("--calib-dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="compute dtype of GPTQ's calibration forwards (Hessians stay fp32); bfloat16 measured 1.6x "
                        "faster than float32 on a CPU with native bf16, at the same perplexity within 1.5 %%")
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
    p.add_argument("--export", action="append", default=None, metavar="FORMATS",
                   help="formats to write, comma-separated or repeated: compressed-tensors (DIR/model, the default), "
                        "gguf (DIR/<model>-<TYPE>.gguf for llama.cpp), safetensors-16bit (with --bits 16), none "
                        "(measure the folder, then remove it)")
    p.add_argument("--gguf-type", default=None, metavar="TYPE",
                   help="with --export gguf: re-round the dequantized weights to this GGUF type (labelled re-rounded) "
                        "where the scheme is not a GGUF block type; by default the file is written from the integers "
                        "(Q4_0, Q4_1 or Q8_0) or refused")
    p.add_argument("--no-verify", action="store_true",
                   help="skip unpacking and reloading the written folder (its perplexity check)")
    p.add_argument("--no-store", action="store_true", help="do not use or fill the results store")
    p.add_argument("--out", required=True, help="output folder (quantize.json, model/)")
    p.set_defaults(handler=cmd_quantize)


def export_formats(given, baseline: bool, gguf_type) -> tuple[str, ...]:
    """The formats of --export (comma-separated or repeated), checked; ConfigError in one sentence otherwise."""
    from pruning_core.quantization.point_files import BASELINE_EXPORTS, DEFAULT_EXPORTS, EXPORTS

    formats = tuple(dict.fromkeys(f for item in (given or ()) for f in _csv(item))) or \
        (BASELINE_EXPORTS if baseline else DEFAULT_EXPORTS)
    unknown = [f for f in formats if f not in EXPORTS]
    if unknown:
        raise ConfigError(f"--export {unknown[0]} is not a format PruneScope writes; choose from {', '.join(EXPORTS)}.")
    if "none" in formats and len(formats) > 1:
        raise ConfigError("--export none writes nothing, so it cannot go with other formats; give one or the other.")
    if baseline and "compressed-tensors" in formats:
        raise ConfigError("--bits 16 is not quantized, so it has no compressed-tensors folder; export "
                          "safetensors-16bit and gguf.")
    if not baseline and "safetensors-16bit" in formats:
        raise ConfigError("The 16-bit files are the starting model's, not the quantized one's; write them with "
                          "--bits 16 (every 16-bit format), and the quantized model with compressed-tensors or gguf.")
    if gguf_type and "gguf" not in formats:
        raise ConfigError("--gguf-type is read with --export gguf; add it, or leave --gguf-type out.")
    if gguf_type and baseline:
        raise ConfigError("--bits 16 writes GGUF F16 (the 16-bit baseline); leave --gguf-type out, or quantize with "
                          "--bits 8 or 4.")
    return formats


def cmd_quantize(args) -> int:
    from pruning_core.models import load_model
    from pruning_core.outputs.files import check_output_folder, folder_written_whole, write_json
    from pruning_core.quantization.point_files import write_point
    from pruning_core.quantization.run import QuantizeSpec

    if args.prune and args.method != "gptq":
        raise ConfigError("--prune prunes in GPTQ's sweep; use it with --method gptq.")
    spec = QuantizeSpec(model=args.model, protocol=protocol_from_args(args), method=args.method, bits=args.bits,
                        group_size=args.group_size, symmetric=not args.asymmetric, scale_dtype=args.scale_dtype,
                        mask=args.mask, structured=args.structured, prune=args.prune, eval_corpora=_csv(args.eval),
                        actorder=args.actorder, calib_dtype=args.calib_dtype, verify=not args.no_verify).validate()
    formats = export_formats(args.export, spec.is_baseline, args.gguf_type)
    if "gguf" in formats and not spec.is_baseline:
        from pruning_core.quantization.gguf_file import gguf_plan

        gguf_plan(spec.scheme(), args.gguf_type)  # a scheme GGUF cannot hold is refused before the model loads
    check_output_folder(args.out, "--out")  # refused before the model is loaded
    progress = ConsoleProgress()
    loaded = load_model(spec.source, trust_remote_code=args.trust_remote_code, progress=progress)
    store = store_from_args(args)
    check_run_fits(args, "quantize", spec.to_dict(), loaded, store)  # a run that cannot fit stops here
    with folder_written_whole(args.out, "--out") as out:
        document, files = write_point(spec, loaded, store, progress, out, formats, args.gguf_type)
        write_json(out / "quantize.json", document)
    _print_summary(document)
    print(f"wrote {args.out}/quantize.json" + "".join(f" and {args.out}/{name}" for name in files.values()))
    return 0


def _print_summary(record: dict) -> None:
    print(record["setting"]["label"])
    for corpus, value in record["ppl"].items():
        dense = record["dense_ppl"].get(corpus)
        change = f" ({value / dense - 1:+.1%} against dense {dense:.3f})" if dense else ""
        print(f"  perplexity on {corpus}: {value:.3f}{change}")
    for fmt, size in record["bytes"].items():
        kind = f" {size['type']}" if size.get("type") else ""
        rounded = " (re-rounded from the dequantized weights)" if size.get("re_rounded") else ""
        print(f"  {size['label']}{kind}{rounded}: {size['weight_bytes']:,} bytes of weights "
              f"({size['total_bytes']:,} in all)")
    gguf_check = (record.get("checks") or {}).get("gguf")
    if gguf_check:
        print(f"  {gguf_check['readback_words']}")
    reload = (record.get("checks") or {}).get("reload")
    if reload:
        print(f"  reloaded with {reload['loaded_with']}: perplexity within {reload['max_relative_gap']:.2e} "
              "relative of the in-memory model")
    if record.get("note"):
        print(f"  note: {record['note']}")

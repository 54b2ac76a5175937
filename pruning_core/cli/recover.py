"""`prunescope recover`: win back quality after pruning with a masked LoRA adapter that keeps every zero.

The pruned model comes from a setting (--method/--sparsity/--structure/--allocation, pruned here), an exported
mask folder (--mask) or a structured folder (--structured); --schedule 0.3,0.5 reaches --sparsity in steps,
recovering between them. Writes DIR/recovery.json (`recovery.run.run_recovery`'s result: dense, pruned and
recovered perplexity per corpus, the loss curve, ranks, merged sparsity, adapter size), DIR/adapter (PEFT's
format, loadable onto the pruned model with `recovery.masked_lora.load_adapter`) and, with --merged,
DIR/merged-model (a Hugging Face folder whose pruned weights are still exactly 0.0). --list prints the adapters
in the store (`recovery.catalog.list_adapters`: the setting each recovers, perplexity, size, folder) and exits.

Two protocols meet here: the papers' one for pruning and perplexity (--calib, --calib-windows, --eval-seqlen,
--eval-windows), and the training's own (--corpus, --steps, --batch-size, --seqlen, --lr, --dtype).
"""

from __future__ import annotations

from pruning_core.cli.common import (
    ConsoleProgress, _csv, _floats, add_memory_args, check_run_fits, load_model_from_args, store_from_args,
    write_json,
)
from pruning_core.errors import ConfigError
from pruning_core.outputs.files import check_output_folder, folder_written_whole, relocated

MERGED_FOLDER = "merged-model"


def add_recover(sub) -> None:
    from pruning_core.recovery.train import TrainConfig

    train = TrainConfig()
    p = sub.add_parser("recover", help="train a masked LoRA adapter that wins back quality and keeps the zeros")
    p.add_argument("--model", default="embedded", help="'embedded', a model folder, a .gguf file or a hub id")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub")
    add_memory_args(p)
    source = p.add_argument_group("the pruned model (a setting by default, or one of --mask / --structured)")
    source.add_argument("--mask", default=None, metavar="DIR", help="an exported mask folder to apply")
    source.add_argument("--structured", default=None, metavar="DIR",
                        help="a structured folder saved by `prunescope structured --save-model`")
    source.add_argument("--method", default=None, help="magnitude, wanda or sparsegpt (default wanda)")
    source.add_argument("--sparsity", type=float, default=None, help="final fraction of zeros (default 0.5)")
    source.add_argument("--structure", default=None, help="unstructured, 2:4 or 4:8 (default unstructured)")
    source.add_argument("--allocation", default=None,
                        help="allocator giving each layer/module its sparsity for the global --sparsity (owl, ...)")
    source.add_argument("--schedule", default="",
                        help="step-wise: comma-separated sparsities before the final one, e.g. 0.3,0.5")
    protocol = p.add_argument_group("calibration and evaluation protocol")
    protocol.add_argument("--calib", default="wiki", help="calibration corpus of the pruning method")
    protocol.add_argument("--calib-column", default=None, help="text column of a .csv/.parquet/.jsonl file")
    protocol.add_argument("--calib-windows", type=int, default=64, help="calibration windows of the pruning")
    protocol.add_argument("--eval-seqlen", type=int, default=512, help="tokens per calibration/evaluation window")
    protocol.add_argument("--eval-windows", type=int, default=64, help="evaluation windows per corpus")
    protocol.add_argument("--eval-corpora", default="",
                          help="comma-separated corpora measured before and after (default: the training corpus)")
    protocol.add_argument("--eval-dtype", default="float32", choices=["float32", "bfloat16"],
                          help="evaluation compute dtype")
    protocol.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    training = p.add_argument_group("recovery training")
    training.add_argument("--corpus", default="wiki", help="training corpus (its calibration split): wiki, news, "
                                                            "pydocs or a file")
    training.add_argument("--steps", type=int, default=train.steps, help="optimizer steps")
    training.add_argument("--batch-size", type=int, default=train.batch_size, help="windows per step")
    training.add_argument("--seqlen", type=int, default=train.seqlen, help="tokens per training window")
    training.add_argument("--lr", type=float, default=train.lr, help="peak learning rate (AdamW, cosine decay)")
    training.add_argument("--rank", type=int, default=8, help="LoRA rank (the budget: uniform rank r everywhere)")
    training.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default 2 x rank)")
    training.add_argument("--rank-allocation", default="uniform", choices=["uniform", "gradient"],
                          help="uniform ranks, or ranks where the masked gradient has most energy (same budget)")
    training.add_argument("--kinds", default="", help="module kinds to adapt, e.g. q,v (default every prunable)")
    training.add_argument("--minutes", type=float, default=None, help="stop training after this many minutes")
    training.add_argument("--dtype", default=train.dtype, choices=["bfloat16", "float32"],
                          help="training compute dtype (bf16 autocast; weights stay fp32)")
    training.add_argument("--train-seed", type=int, default=train.seed, help="window sampling and adapter init")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens of the dense/recovered sample text")
    p.add_argument("--merged", action="store_true", help=f"also write the merged model to OUT/{MERGED_FOLDER}")
    p.add_argument("--no-store", action="store_true",
                   help="do not use or fill the results store (no checkpoints: a stopped run starts again)")
    p.add_argument("--out", default=None, help="output folder (recovery.json, the report, adapter/); required "
                                                "unless --list")
    p.add_argument("--list", action="store_true",
                   help="list the adapters in the store (the setting each recovers, its perplexity) and exit")
    p.set_defaults(handler=cmd_recover)


def spec_from_args(args):
    """The `RecoverySpec` of the command line, validated (bad input fails before the model is loaded)."""
    from pruning_core.protocol import Protocol
    from pruning_core.recovery.run import RecoverySpec

    setting = {"method": args.method, "sparsity": args.sparsity, "structure": args.structure,
               "allocation": args.allocation}
    given = [f"--{name}" for name, value in setting.items() if value is not None]
    if (args.mask or args.structured) and given:
        folder = "--mask" if args.mask else "--structured"
        raise ConfigError(f"{folder} gives the pruned model already; leave out {', '.join(given)} (they describe "
                          f"a setting to prune instead).")
    if args.allocation:
        from pruning_core.allocation.allocators import get_allocator

        if get_allocator(args.allocation).needs == "sensitivity":  # an unknown name lists the known ones
            raise ConfigError(f"--allocation {args.allocation} reads a sensitivity map; export the pruned model "
                              "with `prunescope export --allocation sensitivity` and recover it with --mask DIR.")
    train = {"steps": args.steps, "batch_size": args.batch_size, "seqlen": args.seqlen, "lr": args.lr,
             "dtype": args.dtype, "seed": args.train_seed,
             "max_seconds": args.minutes * 60 if args.minutes is not None else None}
    protocol = Protocol(calib=args.calib, nsamples=args.calib_windows, seqlen=args.eval_seqlen, seed=args.seed,
                        eval_windows=args.eval_windows, dtype=args.eval_dtype,
                        calib_column=args.calib_column).validate()
    from pruning_core.setting import Setting

    setting = Setting(method=args.method or "wanda", structure=args.structure or "unstructured",
                      sparsity=0.5 if args.sparsity is None else args.sparsity, allocation=args.allocation)
    return RecoverySpec(
        model=args.model, protocol=protocol, setting=setting, mask_dir=args.mask, structured_dir=args.structured,
        schedule=_floats(args.schedule), train_corpus=args.corpus, train=train, rank=args.rank, alpha=args.alpha,
        kinds=_csv(args.kinds), rank_allocation=args.rank_allocation, eval_corpora=_csv(args.eval_corpora),
        max_new_tokens=args.max_new_tokens).validate()


def cmd_recover(args) -> int:
    from pruning_core.recovery.run import run_recovery

    import warnings

    # PEFT asks transformers a deprecated question on every attach; the user can do nothing about it.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    if args.list:  # the store's adapters: no model, setting or output folder needed
        from pruning_core.store import Store
        from pruning_core.recovery.catalog import adapter_table, list_adapters

        print("\n".join(adapter_table(list_adapters(Store()))))
        return 0
    if not args.out:
        raise ConfigError("Give --out DIR for the adapter, the report and recovery.json (or --list to see the "
                          "adapters in the store).")
    spec = spec_from_args(args)
    final = check_output_folder(args.out, "--out")  # a user's folder is refused before any work
    progress = ConsoleProgress()
    loaded = load_model_from_args(args, progress)
    store = store_from_args(args)
    check_run_fits(args, "recovery", spec.to_dict(), loaded, store)  # a run that cannot fit stops here
    from pruning_core.recovery.export import recovery_report_data, report_files
    from pruning_core.outputs.report import build_report

    # Written in a fresh folder that replaces --out whole: a killed run never leaves an old adapter beside a new
    # report (training checkpoints live in the store, so a stopped run still resumes).
    with folder_written_whole(final, "--out") as out:
        result = relocated(run_recovery(spec, loaded=loaded, store=store, progress=progress, out_dir=out,
                                        merged_dir=out / MERGED_FOLDER if args.merged else None), out, final)
        write_json(out / "recovery.json", result)
        # The same report the dashboard's download and `export_recovery` write (one wording everywhere).
        report = relocated(build_report(recovery_report_data(result, report_files(out)), out), out, final)
    _print_summary(result)
    print(f"wrote {final / 'recovery.json'}, " + ", ".join(str(p) for p in report.values()))
    return 0


def _print_summary(result: dict) -> None:
    corpora = list(result["dense_ppl"])
    print(f"recovered {result['pruned']['description']}")
    print(f"{'corpus':<10}  {'dense':>10}  {'pruned':>10}  {'recovered':>10}  gap won back")
    for corpus in corpora:
        share = result["recovered_share"].get(corpus)
        print(f"{corpus:<10}  {result['dense_ppl'][corpus]:10.3f}  {result['pruned_ppl'][corpus]:10.3f}  "
              f"{result['recovered_ppl'][corpus]:10.3f}  "
              + (f"{share * 100:.0f} %" if share is not None else "no gap to win back"))
    sparsity = result["sparsity"]
    print(f"merged sparsity {sparsity['merged']:.4f} (pruned {sparsity['before']:.4f}; every pruned weight still "
          f"0.0: {'yes' if sparsity['pruned_weights_zero'] else 'NO'})")
    stages = result["stages"]
    steps = sum(stage["history"]["steps_done"] for stage in stages)
    path = " -> ".join(f"{stage['sparsity'] * 100:.0f} %" for stage in stages)
    print(f"training: {steps} steps in {result['train_seconds']:.1f} s ({result['history']['stopped']}), "
          f"{result['ranks']['allocation']} ranks" + (f", step-wise {path}" if len(stages) > 1 else ""))
    adapter = result["adapter"]
    size = (f"{adapter['bytes']:,} bytes, {adapter['fraction_of_model'] * 100:.2f} % of the model's "
            f"{adapter['model_bytes']:,}" if adapter["bytes"] else "not saved")
    print(f"adapter: {adapter['parameters']:,} trainable parameters, {size}, in {adapter['folder']}")
    if result.get("merged_dir"):
        print(f"merged model: {result['merged_dir']}")

"""`prunescope continual`: prune along a sequence of domains with several strategies; R matrix and BWT.

Writes DIR/continual.json (`continual.run.run_continual`'s result: per strategy the R matrix, BWT, forward
transfer, average perplexity after the last step, mask overlap between steps, and every step's perplexities)
and DIR/<strategy>/step-<t>/ (each step's mask in the export format, `mask_files.save_masks`), and with
--report the report (`outputs.continual_export.continual_report_data`, the dashboard's wording). Prints the
R matrix and BWT of every strategy. Finished steps are kept in the results store, so an interrupted run resumes.
`--executor ray [--ray-address ADDR] [--workers N]` evaluates the step models on Ray workers (same numbers, same
store keys); this process still prunes and owns the store.
"""

from __future__ import annotations

from pruning_core.cli.common import (
    ConsoleProgress, _csv, add_executor_args, add_memory_args, check_run_fits, executor_config_from_args, load_model_from_args, store_from_args,
    write_json,
)
from pruning_core.outputs.files import check_output_folder, folder_written_whole, relocated


def add_continual(sub) -> None:
    from pruning_core.continual.strategies import STRATEGIES

    p = sub.add_parser("continual", help="prune as domains arrive (latest, sequential, accumulated, copal, joint): "
                                         "R matrix and backward transfer")
    p.add_argument("--model", default="embedded", help="'embedded', a model folder, a .gguf file or a hub id")
    p.add_argument("--domains", default="wiki,news,pydocs",
                   help="comma-separated corpora in arrival order: wiki, news, pydocs or text file paths")
    p.add_argument("--method", default="wanda", help="wanda or sparsegpt")
    p.add_argument("--sparsity", type=float, default=0.5, help="target sparsity of every step (ignored for N:M)")
    p.add_argument("--structure", default="unstructured", help="unstructured or N:M such as 2:4")
    p.add_argument("--allocation", default="uniform",
                   help="how the sparsity is spread over the modules: uniform, owl or sensitivity")
    p.add_argument("--sensitivity", default=None, help="sensitivity JSON for --allocation sensitivity")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma-separated: {', '.join(STRATEGIES)}")
    p.add_argument("--nsamples", type=int, default=64, help="calibration windows per domain")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per window")
    p.add_argument("--eval-windows", type=int, default=32, help="evaluation windows per domain")
    p.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="evaluation compute dtype")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (memory only)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub")
    p.add_argument("--no-store", action="store_true", help="do not use or fill the results store")
    add_executor_args(p, "step evaluations")
    add_memory_args(p)
    p.add_argument("--adapters", action="store_true", help="instead of pruning strategies: prune once, then "
                   "one masked LoRA adapter per domain with a selector against one shared adapter (ConPET)")
    p.add_argument("--replay", type=int, default=0, help="--adapters: stored windows per earlier domain replayed")
    p.add_argument("--rank", type=int, default=8, help="--adapters: LoRA rank")
    p.add_argument("--train-steps", type=int, default=100, help="--adapters: training steps per domain")
    p.add_argument("--router", default="selector", choices=["selector", "prefix"],
                   help="--adapters: what routes a window to an adapter (hidden-state selector or lowest prefix loss)")
    p.add_argument("--report", action="store_true",
                   help="also write the report (report.html, .md, .json) with its Continual pruning section")
    p.add_argument("--out", required=True, help="output folder (continual.json and the masks of every step)")
    p.set_defaults(handler=cmd_continual)


def cmd_continual(args) -> int:
    if args.adapters:
        from pruning_core.cli.continual_adapters import cmd_continual_adapters

        if executor_config_from_args(args).kind != "local":
            from pruning_core.errors import ConfigError

            raise ConfigError("--adapters trains in this process; drop --executor ray (it runs the pruning "
                              "strategies' evaluations on Ray workers) or drop --adapters.")

        return cmd_continual_adapters(args)
    from pruning_core.continual.run import ContinualSpec, run_continual
    from pruning_core.protocol import Protocol

    protocol = Protocol(nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed, eval_windows=args.eval_windows,
                        dtype=args.dtype, batch_size=args.batch_size)
    from pruning_core.executors.base import make_executor
    from pruning_core.setting import Setting

    setting = Setting(method=args.method, sparsity=args.sparsity, structure=args.structure, propagation="dense",
                      allocation=args.allocation)
    spec = ContinualSpec(model=args.model, protocol=protocol, domains=_csv(args.domains), setting=setting,
                         sensitivity=args.sensitivity, strategies=_csv(args.strategies),
                         executor=executor_config_from_args(args)).validate()
    # Checked (and Ray imported) before the model loads, so a missing Ray costs nothing.
    executor = make_executor(spec.executor)
    final = check_output_folder(args.out, "--out")  # a user's folder is refused before any work
    progress = ConsoleProgress()
    loaded = load_model_from_args(args, progress)
    store = store_from_args(args)
    check_run_fits(args, "continual", spec.to_dict(), loaded, store)  # a run that cannot fit stops here
    # Written in a fresh folder that replaces --out whole: a killed run never leaves old masks beside new ones.
    with folder_written_whole(final, "--out") as out:
        result = relocated(run_continual(spec, loaded=loaded, store=store, progress=progress, out_dir=out,
                                         executor=executor), out, final)
        write_json(out / "continual.json", result)
        if args.report:
            from pruning_core.continual.export import continual_report_data
            from pruning_core.outputs.report import build_report

            files = [{"name": "continual.json", "bytes": (out / "continual.json").stat().st_size}]
            build_report(continual_report_data(result, files), out)
    _print_result(result)
    print(f"wrote {final / 'continual.json'}")
    if args.report:
        print(f"wrote {final / 'report.html'}")
    return 0


def _print_result(result: dict) -> None:
    domains = result["domains"]
    width = max(10, *(len(d) for d in domains))
    print("dense        " + "  ".join(f"{result['dense_ppl'][d]:>{width}.3f}" for d in domains))
    for name, figures in result["strategies"].items():
        print(f"\n{name}{'' if figures['continual'] else ' (not continual: reference)'}: R[step][domain], "
              "perplexity")
        print(f"  rule: {figures['rule']}")
        print("after step   " + "  ".join(f"{d:>{width}}" for d in domains))
        for t, row in enumerate(figures["R"]):
            print(f"{t + 1:<2} {domains[t]:<9} " + "  ".join(f"{v:>{width}.3f}" for v in row))
        overlap = ", ".join(f"{v:.3f}" for v in figures["overlap"]) or "-"
        fwt = f"{figures['fwt']:+.3f}" if figures["fwt"] is not None else "-"
        print(f"BWT {figures['bwt']:+.3f}  FWT {fwt}  average after last step {figures['average']:.3f}  "
              f"mask overlap between steps {overlap}")
    print(f"\n{result['bwt_note']}.")

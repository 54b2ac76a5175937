"""`prunescope continual --adapters`: per-domain masked adapters with a selector against one shared adapter.

Prunes the model once, trains along the domain sequence (`continual.adapters.run_continual_adapters`), writes
DIR/continual_adapters.json, DIR/adapters/<domain>/ and DIR/adapters/shared/ (PEFT format), DIR/selector/ and
DIR/mask/, and prints the R matrices, BWT and the routers' accuracies. Finished steps are kept in the results
store, so an interrupted run resumes.
"""

from __future__ import annotations

from pruning_core.cli.common import ConsoleProgress, _csv, load_model_from_args, write_json
from pruning_core.outputs.files import check_output_folder, folder_written_whole, relocated


def cmd_continual_adapters(args) -> int:
    from pruning_core.continual.adapters import ContinualAdaptersSpec, run_continual_adapters
    from pruning_core.protocol import Protocol
    from pruning_core.setting import Setting

    protocol = Protocol(nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed, eval_windows=args.eval_windows,
                        dtype=args.dtype, batch_size=args.batch_size)
    train = {"steps": args.train_steps, "seqlen": args.seqlen, "seed": args.seed, "dtype": args.dtype}
    setting = Setting(method=args.method, sparsity=args.sparsity, structure=args.structure)
    spec = ContinualAdaptersSpec(model=args.model, protocol=protocol, domains=_csv(args.domains), setting=setting,
                                 train=train, rank=args.rank, replay=args.replay, router=args.router).validate()
    final = check_output_folder(args.out, "--out")  # a user's folder is refused before any work
    progress = ConsoleProgress()
    loaded = load_model_from_args(args, progress)
    store = None
    if not args.no_store:
        from pruning_core.store import Store

        store = Store()
    # Written in a fresh folder that replaces --out whole: a killed run never leaves old adapters beside new ones.
    with folder_written_whole(final, "--out") as out:
        result = relocated(run_continual_adapters(spec, loaded=loaded, store=store, progress=progress, out_dir=out),
                           out, final)
        write_json(out / "continual_adapters.json", result)
    print_adapters_result(result)
    print(f"wrote {final / 'continual_adapters.json'}")
    return 0


def _print_matrix(title: str, R: list, domains: list, width: int) -> None:
    print(f"\n{title}: R[step][domain], perplexity")
    print("after step   " + "  ".join(f"{d:>{width}}" for d in domains))
    for t, row in enumerate(R):
        print(f"{t + 1:<2} {domains[t]:<9} " + "  ".join(f"{v:>{width}.3f}" for v in row))


def print_adapters_result(result: dict) -> None:
    """The R matrices, BWT, average perplexity and the routers' accuracies of a continual adapters result."""
    domains = [d.split("/")[-1] for d in result["domains"]]
    width = max(10, *(len(d) for d in domains))
    print(f"pruned once: {result['pruned']['description']}, sparsity {result['pruned']['sparsity']:.3f}")
    print("dense        " + "  ".join(f"{result['dense_ppl'][d]:>{width}.3f}" for d in result["domains"]))
    print("no adapter   " + "  ".join(f"{result['pruned_ppl'][d]:>{width}.3f}" for d in result["domains"]))
    for mode, figures in result["modes"].items():
        routed = f" (routed by the {result['selector']['router']})" if mode == "per_domain" else ""
        _print_matrix(f"{mode}{routed}", figures["R"], domains, width)
        print(f"BWT {figures['bwt']:+.3f}  average after last step {figures['average']:.3f}")
        if "R_oracle" in figures:
            _print_matrix(f"{mode} (oracle adapter)", figures["R_oracle"], domains, width)
            print(f"BWT {figures['bwt_oracle']:+.3f}  average after last step {figures['average_oracle']:.3f}")
    selector = result["selector"]
    if selector.get("prefix_accuracy") is not None:
        print(f"\nselector ({selector['kind']}) accuracy on held-out windows {selector['accuracy']:.1%}; "
              f"lowest-prefix-loss router {selector['prefix_accuracy']:.1%}")
    if result.get("forgetting_ratio") is not None:
        print(f"per-domain adapters keep {result['forgetting_ratio']:.1%} of the shared adapter's forgetting (BWT)")
    print(f"\n{result['bwt_note']}.")

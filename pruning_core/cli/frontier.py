"""`prunescope frontier`: the bytes-versus-quality frontier of a model, and the answer for one budget.

Measures every technique asked (`--techniques`, default the standard set: dense, 8/4/3-bit, Wanda/SparseGPT 50 %
and 2:4, structured 20-30 %, structured + 4-bit, SparseGPT 50 % + 4-bit) that the store does not hold yet, then
writes OUT/frontier.json: every point (bytes per format measured on the written files, the runtimes that load
them, perplexity per corpus), the Pareto front, and the answer in one sentence for --max-increase 10% (the
smallest file within it) or --max-bytes 100MB (the best perplexity within it). With --report, also the report
(html, md) with the chart. The folder is written whole: a failure leaves OUT as it was.
"""

from __future__ import annotations

from pruning_core.cli.common import (
    ConsoleProgress, _csv, add_protocol_args, check_run_fits, protocol_from_args, store_from_args,
)

FRONTIER_FILE = "frontier.json"


def add_frontier(sub) -> None:
    from pruning_core.frontier.techniques import STANDARD

    p = sub.add_parser("frontier", help="bytes on disk against perplexity over techniques; the smallest file "
                                        "within a budget")
    add_protocol_args(p)
    p.add_argument("--eval", default="wiki", help="comma-separated evaluation corpora (judged on the worst)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-increase", default=None, metavar="PCT",
                        help="answer the smallest file within this perplexity increase, e.g. 10%% (default)")
    budget.add_argument("--max-bytes", default=None, metavar="SIZE",
                        help="answer the best perplexity within this size on disk, e.g. 100MB")
    p.add_argument("--techniques", default=",".join(STANDARD),
                   help="comma-separated techniques: dense, wanda:0.5, sparsegpt:2:4, structured:0.2, gptq:4:64, "
                        "rtn:4:32:asym, structured:0.2+gptq:4:channel, sparsegpt:0.5+gptq:4:64")
    p.add_argument("--smaller-model", default=None, metavar="M",
                   help="a smaller dense model of the same family (same tokenizer), drawn as a baseline")
    p.add_argument("--verify", action="store_true",
                   help="also unpack and reload every quantized folder with transformers (doubles its evaluation)")
    p.add_argument("--runtime-speed", action="store_true",
                   help="also write each point GGUF can hold as a GGUF file and measure its prefill and decode "
                        "tokens/s in llama.cpp: dense and structured models as F16, a quantized point in 4-bit or "
                        "8-bit symmetric groups of 32 as its own exact Q4_0/Q4_1/Q8_0 file (computed again once if "
                        "stored without it); the dense model in the point's type stands in only where the own file "
                        "cannot be made (needs llama-cpp-python; each structured ratio is pruned again to write "
                        "its model)")
    p.add_argument("--report", action="store_true", help="also write the report (report.html, report.md)")
    p.add_argument("--no-store", action="store_true", help="do not use or fill the results store")
    p.add_argument("--out", required=True, help="output folder (frontier.json)")
    p.set_defaults(handler=cmd_frontier)


def cmd_frontier(args) -> int:
    from pruning_core.frontier.answer import parse_bytes, parse_increase
    from pruning_core.frontier.run import FrontierSpec, run_frontier
    from pruning_core.models import load_model
    from pruning_core.outputs.files import check_output_folder, folder_written_whole, write_json

    spec = FrontierSpec(model=args.model, protocol=protocol_from_args(args), techniques=_csv(args.techniques),
                        eval_corpora=_csv(args.eval),
                        max_increase=parse_increase(args.max_increase) if args.max_increase else None,
                        max_bytes=parse_bytes(args.max_bytes) if args.max_bytes else None,
                        smaller_model=args.smaller_model, verify=bool(args.verify),
                        runtime_speed=bool(args.runtime_speed)).validate()
    if spec.runtime_speed:  # refused in one sentence before any work where llama.cpp is not installed
        from pruning_core.gguf.runtime import require_llama_cpp

        require_llama_cpp()
    check_output_folder(args.out, "--out")  # refused before the model is loaded
    progress = ConsoleProgress()
    loaded = load_model(spec.model, trust_remote_code=args.trust_remote_code, progress=progress)
    store = store_from_args(args)
    check_run_fits(args, "frontier", spec.to_dict(), loaded, store)  # a run that cannot fit stops here
    result = run_frontier(spec, loaded=loaded, store=store, progress=progress)
    with folder_written_whole(args.out, "--out") as out:
        write_json(out / FRONTIER_FILE, result)
        if args.report:
            from pruning_core.frontier.report import frontier_report
            from pruning_core.outputs.report import build_report

            build_report(frontier_report(result), out, formats=("html", "md"))
    _print_summary(result["frontier"])
    print(f"wrote {args.out}/{FRONTIER_FILE}" + (" and the report" if args.report else ""))
    return 0


def _print_summary(frontier: dict) -> None:
    from pruning_core.frontier.speeds import speed_cell, speed_note
    from pruning_core.units import format_bytes

    corpora = frontier["corpora"]
    print(f"{'technique':58s} {'bytes':>12s}  " + "  ".join(f"{c:>9s}" for c in corpora)
          + "  front  speed (prefill / decode)")
    for row in frontier["points"]:
        print(f"{row['technique'][:58]:58s} {format_bytes(row['bytes']):>12s}  "
              + "  ".join(f"{row['ppl'][c]:9.3f}" for c in corpora) + ("  *    " if row["on_front"] else "       ")
              + f"  {speed_cell(row)}")
    print(speed_note(frontier["points"]))
    print(frontier["answer"]["sentence"])
    if frontier["answer"].get("note"):
        print(f"note: {frontier['answer']['note']}")

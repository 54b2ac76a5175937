"""The frontier of the embedded model (issue #27's target): bytes on disk against wiki and news perplexity for
dense 16-bit, GPTQ 8/4/3-bit per channel and in groups, RTN 4-bit groups of 32 asymmetric (the Q4_1 layout the
model's weights came from), Wanda/SparseGPT 50 % and 2:4, structured 20 % and 30 %, structured 20 % + GPTQ 4-bit,
and SparseGPT 50 % + GPTQ 4-bit in one sweep; the smallest file within +10 % and within +25 % wiki perplexity.

Everything goes through `frontier.run.run_frontier` (what `prunescope frontier` runs), with a store, so a run cut
short resumes. Writes JSON: the frontier (judged on wiki alone, and on the worst of wiki and news), both answers
per budget, what each technique took, the protocol, the machine and its load (the machine is shared).

    python benchmarks/frontier.py [--nsamples 16 --seqlen 256 --eval-windows 16] [--out docs/runs/frontier.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.peer_speed import load_average, log, machine  # noqa: E402
from pruning_core.frontier.build import build_frontier, frontier_points  # noqa: E402
from pruning_core.frontier.run import FrontierSpec, run_frontier  # noqa: E402
from pruning_core.frontier.techniques import STANDARD  # noqa: E402
from pruning_core.models import load_model  # noqa: E402
from pruning_core.outputs.files import json_default  # noqa: E402
from pruning_core.protocol import Protocol  # noqa: E402
from pruning_core.store import Store  # noqa: E402


def table(frontier: dict) -> list[dict]:
    """The frontier table: technique, format, bytes on disk (measured), perplexity per corpus, on the front."""
    return [{"technique": r["technique"], "family": r["family"], "format": r["format_words"], "bytes": r["bytes"],
             **{f"ppl_{c}": round(v, 3) for c, v in r["ppl"].items()}, "worst_change": round(r["change"], 4),
             "on_front": r["on_front"]} for r in frontier["points"]]


def stored_result(store, spec: FrontierSpec) -> dict:
    """`run_frontier`'s result assembled from the points a private store already holds, measuring nothing (for a
    run cut short on a busy machine: every finished point was stored as it finished). The store must hold this
    protocol only (the benchmark's own PRUNESCOPE_HOME): sweep and structured point records do not carry it."""
    from pruning_core.frontier.points import dense_point, quantized_point, structured_point, sweep_point
    from pruning_core.frontier.collect import measured_structured, same_protocol

    protocol = spec.protocol.to_dict()
    dense_ppl = {r["corpus"]: r["ppl"] for r in store.results_of_kind("dense_ppl")
                 if r["windows"] == spec.protocol.eval_windows and r["tokens"] == r["windows"] * (spec.protocol.seqlen - 1)}
    dense_files = next(r for r in store.results_of_kind("saved_size") if r["what"] == "dense")
    points = [dense_point(dense_ppl, dense_files, {"kind": "dense"}, "SmolLM2-135M-Instruct")]
    points += [sweep_point(p, dense_files, {"kind": "sweep"}) for p in store.results_of_kind("sweep_point")]
    points += [structured_point(p, measured_structured(p), {"kind": "structured", "ratio": p["ratio"]})
               for p in store.results_of_kind("structured_point") if measured_structured(p)]
    points += [quantized_point(r, {"kind": "quantized"}) for r in store.results_of_kind("quantized_point")
               if same_protocol(r.get("protocol"), protocol)]
    return {"protocol": {**protocol, "eval_corpora": list(spec.corpora), "assembled_from_store": True},
            "frontier": build_frontier(points, list(spec.corpora), max_increase=0.10), "measured": []}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--techniques", default=",".join(STANDARD))
    parser.add_argument("--out", default=str(ROOT / "docs" / "runs" / "frontier.json"))
    parser.add_argument("--from-store", action="store_true",
                        help="measure nothing: assemble the frontier from the points the store holds")
    args = parser.parse_args()
    protocol = Protocol(calib="wiki", nsamples=args.nsamples, seqlen=args.seqlen, eval_windows=args.eval_windows)
    spec = FrontierSpec(model=args.model, protocol=protocol, techniques=tuple(args.techniques.split(",")),
                        eval_corpora=("wiki", "news"), max_increase=0.10)
    started, load_before = time.perf_counter(), load_average()
    loaded = load_model(spec.model)
    if args.from_store:
        result = stored_result(Store(), spec)
    else:
        result = run_frontier(spec, loaded=loaded, store=Store(), progress=lambda f, m: log(f"{100 * f:5.1f}% {m}"))
    seconds = time.perf_counter() - started
    points = frontier_points(result["frontier"])
    answers = {}
    for corpora in (["wiki"], ["wiki", "news"]):
        name = "+".join(corpora)
        for budget in (0.10, 0.25):
            frontier = build_frontier(points, corpora, max_increase=budget)
            said = frontier["answer"]
            row = next((r for r in frontier["points"] if r["key"] == said["key"]), None)
            answers[f"{name} within +{budget:.0%}"] = {"sentence": said["sentence"], "note": said["note"],
                                                      "technique": row and row["technique"],
                                                      "bytes": row and row["bytes"], "ppl": row and row["ppl"]}
    wiki = build_frontier(points, ["wiki"], max_increase=0.10)
    document = {"model": loaded.name, "protocol": result["protocol"], "techniques": list(spec.techniques),
                "answers": answers, "table_wiki": table(wiki), "table_worst_of_wiki_news": table(result["frontier"]),
                "frontier": result["frontier"], "measured": result["measured"], "seconds": round(seconds, 1),
                "machine": machine(), "load_average": {"before": load_before, "after": load_average()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(document, indent=1, default=json_default))
    for row in document["table_wiki"]:
        print(f"{row['technique'][:60]:60s} {row['bytes']:>12,d}  wiki {row['ppl_wiki']:8.3f}  news "
              f"{row['ppl_news']:8.3f}  {'front' if row['on_front'] else ''}")
    for name, said in answers.items():
        print(f"{name}: {said['sentence']}")
    log(f"wrote {args.out} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

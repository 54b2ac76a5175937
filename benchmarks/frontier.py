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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--techniques", default=",".join(STANDARD))
    parser.add_argument("--out", default=str(ROOT / "docs" / "runs" / "frontier.json"))
    args = parser.parse_args()
    protocol = Protocol(calib="wiki", nsamples=args.nsamples, seqlen=args.seqlen, eval_windows=args.eval_windows)
    spec = FrontierSpec(model=args.model, protocol=protocol, techniques=tuple(args.techniques.split(",")),
                        eval_corpora=("wiki", "news"), max_increase=0.10)
    started, load_before = time.perf_counter(), load_average()
    loaded = load_model(spec.model)
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

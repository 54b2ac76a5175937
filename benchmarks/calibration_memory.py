"""Peak memory of a run against the size of its calibration file (issue 26: memory bounded by the protocol).

Writes a 1 MB and a 20 MB plain-text calibration file (paragraphs of the embedded wiki and news text, repeated
with a counter so that no two paragraphs are equal), then runs the same `prunescope sweep` on each in its own
process with a fresh PRUNESCOPE_HOME: one Wanda 50 % point on `--model` (default tiny-llama: the model is
small, so what grows with the file is what shows), 16 x 128 calibration windows, 4 evaluation windows of the
file's own evaluation split. Reports each run's peak resident memory (the child's ru_maxrss), wall time and
the ratio 20 MB / 1 MB (target: at most 1.5), with the machine's facts.

Usage: `python benchmarks/calibration_memory.py [--model tiny-llama] [--out docs/runs/calibration-memory.json]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _child_runs import machine, run_command  # noqa: E402

SIZES_MB = (1, 20)
TARGET_RATIO = 1.5


def write_text_file(path: Path, megabytes: int) -> int:
    """A text file of about `megabytes` MB of distinct paragraphs; returns its size in bytes."""
    from pruning_core import data

    paragraphs = [p for name in ("wiki", "news") for p in data.load_corpus_text(name, "calibration").split("\n\n")
                  if p.strip()]
    target, written, i = megabytes * 1_000_000, 0, 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < target:
            chunk = f"{paragraphs[i % len(paragraphs)]} ({i})\n\n"
            handle.write(chunk)
            written += len(chunk.encode("utf-8"))
            i += 1
    return path.stat().st_size


def run_one(model: str, file: Path, home: Path, out: Path) -> dict:
    argv = ["sweep", "--model", model, "--calib", str(file), "--eval", str(file), "--methods", "wanda",
            "--structures", "unstructured", "--sparsities", "0.5", "--nsamples", "16", "--seqlen", "128",
            "--eval-windows", "4", "--seed", "0", "--out", str(out)]
    return run_command(argv, home, f"{file.name}")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for megabytes in SIZES_MB:
            file = tmp / f"calibration-{megabytes}mb.txt"
            size = write_text_file(file, megabytes)
            measured = run_one(args.model, file, tmp / f"home-{megabytes}", tmp / f"out-{megabytes}")
            runs[f"{megabytes}MB"] = {"file_bytes": size, **measured}
    small, big = (runs[f"{m}MB"]["peak_rss_bytes"] for m in SIZES_MB)
    report = {"benchmark": "calibration_memory", "model": args.model, "runs": runs,
              "peak_ratio_20mb_over_1mb": big / small, "target_ratio": TARGET_RATIO,
              "meets_target": big / small <= TARGET_RATIO, "machine": machine(),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

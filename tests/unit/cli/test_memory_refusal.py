"""Every command that runs a job prints its estimate (time and peak memory) and refuses, before any work, a run
whose estimated peak exceeds the memory available (PRUNESCOPE_MEMORY_LIMIT here): exit status 2, one sentence,
nothing written, nothing stored. Under the limit, or with --ignore-memory-limit, the same run completes."""

from __future__ import annotations

import json

import pytest

from pruning_core.cli.main import main
from pruning_core.store import Store

TINY = ["--model", "tiny-llama", "--calib", "news", "--nsamples", "2", "--seqlen", "16", "--eval-windows", "1"]
SWEEP = ["sweep", *TINY, "--eval", "news", "--methods", "wanda", "--sparsities", "0.5"]

#: One run of each command that runs a job, as small as it allows (only the refusal is exercised for most).
COMMANDS = {
    "sweep": SWEEP,
    "sensitivity": ["sensitivity", *TINY, "--method", "wanda", "--sparsities", "0.5"],
    "budget": ["budget", *TINY, "--method", "wanda", "--max-increase", "0.1"],
    "structured": ["structured", *TINY, "--eval", "news", "--ratios", "0.25"],
    "quantize": ["quantize", *TINY, "--eval", "news"],
    "frontier": ["frontier", *TINY, "--eval", "news"],
    "export": ["export", *TINY, "--eval", "news", "--method", "wanda"],
    "recover": ["recover", "--model", "tiny-llama", "--calib", "news", "--calib-windows", "2", "--eval-seqlen", "16",
                "--eval-windows", "1", "--corpus", "news", "--steps", "1", "--seqlen", "16"],
    "continual": ["continual", "--model", "tiny-llama", "--domains", "news,pydocs", "--nsamples", "2", "--seqlen",
                  "16", "--eval-windows", "1", "--strategies", "latest"],
}


def _stored_rows() -> int:
    """Results stored, beside what an estimate caches (this machine's speed, the tokens a split holds)."""
    return Store().execute("SELECT COUNT(*) AS n FROM results WHERE kind NOT IN ('throughput', 'split_tokens')")[0]["n"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_run_over_the_limit_is_refused_in_one_sentence_before_any_work(command, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PRUNESCOPE_MEMORY_LIMIT", "1MB")
    out = tmp_path / "out"
    assert main(COMMANDS[command] + ["--out", str(out)]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in captured.err, captured.err
    sentence = errors[0]
    assert "of memory at its peak (estimate) but 1.0 MB is available (PRUNESCOPE_MEMORY_LIMIT=1MB)" in sentence
    assert "@bfloat16" in sentence and "--nsamples" in sentence and "--device cuda" in sentence
    assert "--ignore-memory-limit" in sentence
    assert "estimate: " in captured.out and "peak memory" in captured.out  # the line it was judged by
    assert not any(out.rglob("*.json")) and _stored_rows() == 0  # nothing started


def test_the_same_run_under_the_limit_or_forced_completes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PRUNESCOPE_MEMORY_LIMIT", "1TB")
    assert main(SWEEP + ["--out", str(tmp_path / "fits")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("estimate: "))
    assert "peak memory" in line and "MB" in line
    assert json.loads((tmp_path / "fits" / "results.json").read_text())["points"]
    monkeypatch.setenv("PRUNESCOPE_MEMORY_LIMIT", "1MB")
    assert main(SWEEP + ["--eval-windows", "2", "--ignore-memory-limit", "--out", str(tmp_path / "forced")]) == 0
    assert (tmp_path / "forced" / "results.json").is_file()

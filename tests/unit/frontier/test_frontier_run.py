"""`prunescope frontier` on a tiny model: every technique measured through its own capability, sizes equal to
the files written, the points read back from the store on a second run, the answer in frontier.json; the job
kind; techniques and budgets refused in one sentence."""

from __future__ import annotations

import json

import pytest

from pruning_core.cli import EXIT_BAD_INPUT, main
from pruning_core.errors import ConfigError
from pruning_core.frontier.run import FrontierSpec, run_frontier
from pruning_core.frontier.techniques import parse_technique
from pruning_core.jobs.runner import JOB_KINDS
from pruning_core.protocol import Protocol
from pruning_core.store import Store

PROTOCOL = ["--calib", "news", "--nsamples", "4", "--seqlen", "32", "--eval-windows", "2", "--batch-size", "4"]
TECHNIQUES = "gptq:4:32,rtn:4:32:asym,wanda:0.5,sparsegpt:2:4,structured:0.3,structured:0.3+gptq:4:channel," \
             "sparsegpt:0.5+gptq:4:32"


def test_cli_writes_frontier_json_with_measured_points_the_front_and_the_answer(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PRUNESCOPE_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    assert main(["frontier", "--model", "tiny-llama", *PROTOCOL, "--eval", "news,wiki", "--techniques", TECHNIQUES,
                 "--max-increase", "5%", "--report", "--out", str(out)]) == 0
    document = json.loads((out / "frontier.json").read_text())
    frontier = document["frontier"]
    families = {row["family"] for row in frontier["points"]}
    assert families == {"dense", "quantized", "unstructured", "N:M", "structured", "structured + quantized",
                        "pruned + quantized"}
    by_family = {}
    for row in frontier["points"]:
        by_family.setdefault(row["family"], []).append(row)
        assert set(row["ppl"]) == {"news", "wiki"}
    dense = by_family["dense"][0]
    assert dense["bytes"] == frontier["dense_bytes"] and dense["format"] == "safetensors-16bit"
    # Pruned zeros are stored: the same file as dense. Removed structure and quantization are smaller.
    assert all(row["bytes"] == dense["bytes"] for row in by_family["unstructured"] + by_family["N:M"])
    assert by_family["structured"][0]["bytes"] < dense["bytes"]
    for row in by_family["quantized"]:
        assert row["format"] == "compressed-tensors" and row["bytes"] < by_family["structured"][0]["bytes"]
        assert row["runtimes"] == ["transformers", "vLLM"]
    assert by_family["structured + quantized"][0]["bytes"] < min(r["bytes"] for r in by_family["quantized"])
    # The front is exactly the non-dominated points (recomputed from the file's own numbers).
    for row in frontier["points"]:
        others = [o for o in frontier["points"] if o is not row]
        beaten = any(o["bytes"] <= row["bytes"] and o["change"] <= row["change"]
                     and (o["bytes"] < row["bytes"] or o["change"] < row["change"]) for o in others)
        assert row["on_front"] == (not beaten)
    said = frontier["answer"]
    answer = next(r for r in frontier["points"] if r["key"] == said["key"])
    assert said["found"]  # a tiny random model loses well under 5 % at 4 bits
    if said["found"]:
        assert said["sentence"].startswith(f"Stored as {answer['format_words']}, this model weighs ")
        assert answer["change"] <= 0.05 and answer["on_front"]
        assert all(r["bytes"] >= answer["bytes"] for r in frontier["points"] if r["change"] <= 0.05)
    assert (out / "report.html").exists() and "Pareto front" in (out / "report.html").read_text()
    printed = capsys.readouterr().out
    assert said["sentence"] in printed
    # A second run reads every point back from the store (the structured folder is written again).
    again = tmp_path / "again"
    assert main(["frontier", "--model", "tiny-llama", *PROTOCOL, "--eval", "news,wiki", "--techniques", TECHNIQUES,
                 "--max-bytes", "100KB", "--out", str(again)]) == 0
    second = json.loads((again / "frontier.json").read_text())
    assert all(m.get("from_store", True) for m in second["measured"])
    assert {r["key"]: r["ppl"] for r in second["frontier"]["points"]} == \
           {r["key"]: r["ppl"] for r in frontier["points"]}
    assert second["frontier"]["answer"]["budget"] == {"max_bytes": 100_000}


def test_the_job_kind_runs_the_frontier(tmp_path):
    assert JOB_KINDS["frontier"] == "pruning_core.frontier.run:run_frontier_job"
    spec = FrontierSpec(model="tiny-llama", protocol=Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=2,
                                                              batch_size=4), techniques=("rtn:8:channel",))
    result = run_frontier(spec.to_dict(), store=Store(tmp_path / "s.sqlite"))
    frontier = result["frontier"]
    assert [r["family"] for r in frontier["points"]] == ["quantized", "dense"]  # smallest file first
    assert result["spec"]["techniques"] == ["dense", "rtn:8:channel"] and frontier["corpora"] == ["news"]


@pytest.mark.parametrize("bad", ["gptq:4", "wanda:1.5", "structured", "wanda:0.5+sparsegpt:0.5", "wanda:0.5+gptq:4:64",
                                 "pruner:0.5", "gptq:17:64", "rtn:4:0"])
def test_bad_techniques_get_one_sentence(bad):
    with pytest.raises(ConfigError):
        parse_technique(bad)


def test_cli_refuses_two_budgets_and_a_bad_technique_before_loading(tmp_path, capsys):
    assert main(["frontier", "--model", "tiny-llama", "--techniques", "gptq:4", "--out", str(tmp_path / "o")]) \
        == EXIT_BAD_INPUT
    assert "gptq:4" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: the two budgets are mutually exclusive
        main(["frontier", "--max-increase", "10%", "--max-bytes", "1MB", "--out", str(tmp_path / "o")])

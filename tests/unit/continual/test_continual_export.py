"""Export of a continual run on the tiny model: every step's mask of every strategy on disk, continual.json, and
a report whose Continual pruning section holds each strategy's R matrix, BWT with its convention and rule; the
CLI's --report writes the same section; a folder holding a user's files is never written into."""

from __future__ import annotations

import json

import pytest

from pruning_core.continual.run import ContinualSpec
from pruning_core.errors import ConfigError
from pruning_core.models.tiny import tiny_model
from pruning_core.continual.export import export_continual
from pruning_core.continual.figures import r_table
from pruning_core.outputs.figures import fmt
from pruning_core.protocol import Protocol

PROTOCOL = Protocol(nsamples=4, seqlen=32, eval_windows=2, batch_size=4)


def test_export_writes_masks_of_every_step_and_the_continual_section(tmp_path):
    spec = ContinualSpec(model="tiny", protocol=PROTOCOL, domains=("news", "pydocs"),
                         strategies=("latest", "copal", "joint"))
    out = tmp_path / "export"
    written = export_continual(tiny_model("llama", layers=2), spec, out)
    result = written["result"]
    for name in ("latest", "copal", "joint"):
        for t in (1, 2):
            folder = out / name / f"step-{t}"
            manifest = json.loads((folder / "manifest.json").read_text())
            assert (folder / "masks.safetensors").is_file()
            assert manifest["continual"]["strategy"] == name and manifest["continual"]["step"] == t
        assert written["masks"][name] == [str(out / name / "step-1"), str(out / name / "step-2")]
    assert json.loads((out / "continual.json").read_text())["strategies"]["copal"]["R"] == \
        result["strategies"]["copal"]["R"]

    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert 'id="continual"' in html and "## Continual pruning" in md
    for name, figures in result["strategies"].items():
        assert f"R matrix: {name}" in md and figures["rule"].replace("|", "\\|") in md
        headers, rows = r_table(result, name)
        assert len(rows) == 3 and rows[1][1] == fmt(figures["R"][0][0])  # dense row, then one row per step
        for row in rows:
            assert "| " + " | ".join(row) + " |" in md
    assert "positive = forgetting" in md and "forgets least: BWT" in md
    assert "copal/step-2/masks.safetensors" in md  # the files table lists the masks
    report = json.loads((out / "report.json").read_text())
    assert any("forgets least" in s for s in report["summary"])
    assert html.count('class="chart" id="continual-') == 3 + 2  # an R heatmap per strategy, bars, overlap

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's notes")
    with pytest.raises(ConfigError, match="PruneScope did not write"):  # a user's folder is never written into
        export_continual(tiny_model("llama", layers=2), spec, tmp_path / "mine")


def test_cli_report_flag_writes_the_continual_section(tmp_path):
    from pruning_core.cli import main

    out = tmp_path / "cli"
    status = main(["continual", "--model", "tiny-llama", "--domains", "news,pydocs", "--strategies", "latest,copal",
                   "--nsamples", "4", "--seqlen", "32", "--eval-windows", "2", "--batch-size", "4", "--no-store",
                   "--report", "--out", str(out)])
    assert status == 0
    result = json.loads((out / "continual.json").read_text())
    md = (out / "report.md").read_text()
    assert "## Continual pruning" in md and "R matrix: copal" in md
    assert f"BWT {result['strategies']['copal']['bwt']:+.3f}," in md
    assert (out / "report.html").is_file()

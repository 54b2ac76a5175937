"""Bad input on the command line ends in one sentence naming the problem and what to do, exit status 2, and
nothing written: an --out under a file or with a name too long for the file system, windows longer than the
model's context, a plan file nested too deeply or not JSON, a malformed plan."""

from __future__ import annotations

import json

import pytest

from pruning_core.cli.main import main

SWEEP = ["sweep", "--model", "tiny-llama", "--calib", "news", "--eval", "news", "--methods", "magnitude",
         "--sparsities", "0.5", "--nsamples", "2", "--seqlen", "16", "--eval-windows", "1"]
EXPORT = ["export", "--model", "tiny-llama", "--calib", "news", "--eval", "news", "--nsamples", "2", "--seqlen",
          "16", "--eval-windows", "1"]


def _one_sentence(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err  # progress lines, then the one error line
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.rstrip("\n").endswith(errors[0]) and "Traceback" not in err, err
    return errors[0]


def test_an_out_folder_under_a_file_or_too_long_is_one_sentence(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "is a file, not a folder" in _one_sentence(capsys, SWEEP + ["--out", str(blocker / "out")])
    assert "too long for the file system" in _one_sentence(capsys, SWEEP + ["--out", str(tmp_path / ("a" * 300))])


def test_windows_past_the_context_are_one_sentence(tmp_path, capsys):
    said = _one_sentence(capsys, SWEEP[:-6] + ["--nsamples", "2", "--seqlen", "1024", "--eval-windows", "1",
                                               "--out", str(tmp_path / "o")])
    assert "longer than tiny-llama's context of 512 positions" in said


@pytest.mark.parametrize("content, words", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("[[[[", "Cannot read the plan file"),
    (json.dumps({"kinds": ["q"], "values": [["half"]]}), "must be numbers"),
    (json.dumps([1, 2]), "is not a sparsity plan"),
])
def test_a_bad_plan_file_is_one_sentence(tmp_path, capsys, content, words):
    plan = tmp_path / "plan.json"
    plan.write_text(content)
    assert words in _one_sentence(capsys, EXPORT + ["--plan", str(plan), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()

"""An export folder is either the old export or the whole new one: re-exporting replaces it whole, a failure
while writing leaves the old one untouched, and a folder holding other files is never written into."""

from __future__ import annotations

import json

import pytest

from pruning_core.errors import ConfigError
from pruning_core.export.pipeline import ExportOptions, run_export
from pruning_core.models import load_model
from pruning_core.protocol import Protocol

PROTOCOL = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=2)


def _options(sparsity: float, **extra) -> ExportOptions:
    return ExportOptions(**{"method": "magnitude", "sparsity": sparsity, "eval_corpora": ("news",), "prompts": (),
                            "heatmap": False, "formats": ("json",), **extra})


def test_re_export_replaces_the_folder_whole(tmp_path):
    loaded, out = load_model("tiny-llama"), tmp_path / "export"
    run_export(loaded, PROTOCOL, _options(0.5, save_model=True, recipe=True), out)
    assert (out / "pruned-model").is_dir() and (out / "recipe.yaml").exists()
    run_export(loaded, PROTOCOL, _options(0.7), out)
    assert not (out / "pruned-model").exists() and not (out / "recipe.yaml").exists()  # no 50 % leftovers
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert manifest["target_sparsity"] == pytest.approx(0.7) == report["setting"]["sparsity"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]  # no partial or old folder left


def test_a_failure_while_writing_leaves_the_old_export(tmp_path, monkeypatch):
    loaded, out = load_model("tiny-llama"), tmp_path / "export"
    run_export(loaded, PROTOCOL, _options(0.5), out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    import pruning_core.outputs.report as report

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "build_report", full_disk)
    with pytest.raises(OSError):
        run_export(loaded, PROTOCOL, _options(0.7), out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]


def test_a_folder_with_other_files_is_refused_before_any_work(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("a user's notes")
    with pytest.raises(ConfigError, match="PruneScope did not write"):
        run_export(load_model("tiny-llama"), PROTOCOL, _options(0.5), out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_an_export_names_a_user_corpus_by_its_file_name_never_its_path(tmp_path):
    from pruning_core import data

    uploads = tmp_path / "home" / "uploads"
    uploads.mkdir(parents=True)
    corpus = uploads / "3972dc9744f6-GPL-3.txt"
    corpus.write_text("\n\n".join(data.load_corpus_text("news", "calibration").split("\n\n")[:120]))
    protocol = Protocol(calib=str(corpus), nsamples=4, seqlen=32, eval_windows=2)
    out = tmp_path / "export"
    run_export(load_model("tiny-llama"), protocol, _options(0.5, formats=("json", "md", "html")), out)
    for name in ("manifest.json", "report.json", "report.md", "report.html"):
        text = (out / name).read_text()
        assert str(uploads) not in text and "3972dc9744f6" not in text, name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"]["corpus"] == "GPL-3.txt" and len(manifest["calibration"]["sha256"]) == 64

"""The structured, recovery and continual exports (and their commands) are written whole, as the mask export is:
a failure while writing (a full disk) leaves the earlier export byte for byte and no visible partial folder, a
re-export replaces the earlier one whole, a folder holding a user's files is refused before any work and left
untouched, and every path a result reports is the final one, never the temporary folder's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pruning_core.cli import main
from pruning_core.continual.run import ContinualSpec
from pruning_core.errors import ConfigError
from pruning_core.models import load_model
from pruning_core.models.tiny import tiny_model
from pruning_core.outputs.files import MARKER
from pruning_core.protocol import Protocol
from pruning_core.recovery.run import RecoverySpec
from pruning_core.structured.run import StructuredSpec

PROTOCOL = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=2, batch_size=4)
TINY_CLI = ["--nsamples", "4", "--seqlen", "32", "--eval-windows", "2", "--batch-size", "4", "--no-store"]


def _structured(ratio: float = 0.25) -> StructuredSpec:
    return StructuredSpec(model="tiny-llama", protocol=PROTOCOL, ratios=(ratio,), eval_corpora=("news",),
                          score="magnitude", compensate=False, max_new_tokens=0)


def _recovery(sparsity: float = 0.5) -> RecoverySpec:
    return RecoverySpec(model="tiny-llama", protocol=PROTOCOL, method="wanda", sparsity=sparsity,
                        train_corpus="news", train={"steps": 2, "batch_size": 2, "seqlen": 32, "eval_every": 2},
                        rank=2, eval_corpora=("news",), curve_windows=2, max_new_tokens=0)


def _continual(strategies=("latest",)) -> ContinualSpec:
    return ContinualSpec(model="tiny", protocol=PROTOCOL, domains=("news", "pydocs"), strategies=strategies)


def _export(kind: str, out: Path, variant: int = 0) -> dict:
    """Run the `kind` export into `out`; `variant` changes the setting (so a re-export writes other numbers)."""
    if kind == "structured":
        from pruning_core.structured.export import export_structured

        return export_structured(load_model("tiny-llama"), _structured((0.25, 0.4)[variant]), out)
    if kind == "recovery":
        from pruning_core.recovery.export import export_recovery

        return export_recovery(load_model("tiny-llama"), _recovery((0.5, 0.6)[variant]), out)
    from pruning_core.continual.export import export_continual

    return export_continual(tiny_model("llama", layers=2), _continual((("latest", "copal"), ("latest",))[variant]),
                            out)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def _paths_in(value) -> list[str]:
    """Every string in a result that names a path (absolute)."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths_in(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _paths_in(v)]
    return [value] if isinstance(value, str) and value.startswith("/") else []


def _writer(kind: str) -> str:
    """The module whose `build_report` the export calls last, after its model and mask files are written."""
    return {"structured": "pruning_core.structured.export", "recovery": "pruning_core.recovery.export",
            "continual": "pruning_core.continual.export"}[kind]


@pytest.mark.parametrize("kind", ["structured", "recovery", "continual"])
def test_a_full_disk_while_writing_leaves_the_old_export_byte_for_byte(kind, tmp_path, monkeypatch):
    import importlib

    out = tmp_path / "export"
    _export(kind, out)
    before = _snapshot(out)
    module = importlib.import_module(_writer(kind))
    seen = []

    def full_disk(document, folder, **kwargs):
        seen.append(sorted(p.name for p in Path(folder).iterdir()))  # the new model / masks are written by now
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "build_report", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _export(kind, out, variant=1)
    assert seen and seen[0], "the failure came before anything was written"
    assert _snapshot(out) == before
    assert _leftovers(tmp_path, "export") == []  # no partial or old folder beside it


@pytest.mark.parametrize("kind", ["structured", "recovery", "continual"])
def test_a_folder_with_a_users_files_is_refused_before_any_work(kind, tmp_path, monkeypatch):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("a user's notes")
    import importlib

    module = importlib.import_module(_writer(kind))
    run = {"structured": "run_structured", "recovery": "run_recovery", "continual": "run_continual"}[kind]

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the output folder was checked")

    monkeypatch.setattr(module, run, no_work)
    call = {"structured": lambda: module.export_structured(None, _structured(), out),
            "recovery": lambda: module.export_recovery(None, _recovery(), out),
            "continual": lambda: module.export_continual(None, _continual(), out)}[kind]
    with pytest.raises(ConfigError, match="PruneScope did not write"):
        call()
    assert _snapshot(out) == {"notes.txt": b"a user's notes"}


def test_structured_re_export_replaces_a_command_output_whole_and_reports_final_paths(tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "export"
    assert main(["structured", "--model", "tiny-llama", "--calib", "news", "--eval", "news", *TINY_CLI,
                 "--ratios", "0.2", "--score", "magnitude", "--no-compensate", "--save-model",
                 "--out", str(out)]) == 0
    assert (out / "structured-0.2").is_dir() and (out / "structured.json").is_file() and (out / MARKER).exists()
    saved = json.loads((out / "structured.json").read_text())["points"][0]["saved"]["folder"]
    assert saved == str(out / "structured-0.2")  # the command's JSON names the final folder too

    written = _export("structured", out)
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "model", "report.html", "report.md",
                                                            "report.json"])
    assert written["folder"] == str(out / "model") == written["point"]["saved"]["folder"]
    assert all(Path(p).parent == out and Path(p).is_file() for p in written["report"].values())
    AutoModelForCausalLM.from_pretrained(written["folder"])
    assert _leftovers(tmp_path, "export") == []
    assert ".partial-" not in (out / "report.json").read_text()


def test_recovery_re_export_replaces_the_old_one_and_reports_final_paths(tmp_path):
    out = tmp_path / "export"
    _export("recovery", out)
    assert (out / "merged-model").is_dir()
    assert json.loads((out / "mask" / "manifest.json").read_text())["target_sparsity"] == pytest.approx(0.5)
    second = _export("recovery", out, variant=1)
    result = second["result"]
    assert second["folder"] == str(out) and second["merged"] == str(out / "merged-model")
    assert result["adapter"]["folder"] == second["adapter"] == str(out / "adapter")
    assert result["merged_dir"] == str(out / "merged-model") and result["mask_dir"] == str(out / "mask")
    for path in _paths_in({k: v for k, v in second.items() if k != "files"}):
        assert ".partial-" not in path, path
    assert all(Path(p).is_file() for p in second["report"].values())
    manifest = json.loads((out / "mask" / "manifest.json").read_text())
    assert manifest["target_sparsity"] == pytest.approx(0.6)
    for name in ("report.json", "report.md", "report.html"):
        assert ".partial-" not in (out / name).read_text(), name
    assert _leftovers(tmp_path, "export") == []

    # The command replaces it whole too: without --merged, no merged model of the export is left beside it.
    assert main(["recover", "--model", "tiny-llama", "--calib", "news", "--calib-windows", "4", "--eval-seqlen", "32",
                 "--eval-windows", "2", "--corpus", "news", "--steps", "2", "--batch-size", "2", "--seqlen", "32",
                 "--rank", "2", "--max-new-tokens", "0", "--no-store", "--out", str(out)]) == 0
    assert not (out / "merged-model").exists() and (out / "recovery.json").is_file()
    recorded = json.loads((out / "recovery.json").read_text())
    assert recorded["adapter"]["folder"] == str(out / "adapter") and recorded["merged_dir"] is None


def test_recovery_in_the_store_names_the_stores_adapter_not_the_export_folder(tmp_path):
    from pruning_core.recovery.export import export_recovery
    from pruning_core.recovery.run import adapter_folder, run_recovery
    from pruning_core.store import Store

    store = Store(tmp_path / "store.sqlite")
    written = export_recovery(load_model("tiny-llama"), _recovery(), tmp_path / "export", store=store)
    assert written["result"]["adapter"]["folder"] == str(tmp_path / "export" / "adapter")
    again = run_recovery(_recovery(), loaded=load_model("tiny-llama"), store=store)
    assert again["from_store"]
    assert again["adapter"]["folder"] == str(adapter_folder(store, again["key"]))
    assert again["merged_dir"] is None and again["mask_dir"] is None


def test_continual_re_export_replaces_the_old_one_and_the_command_too(tmp_path):
    out = tmp_path / "export"
    _export("continual", out)
    assert (out / "copal").is_dir()
    written = _export("continual", out, variant=1)
    assert not (out / "copal").exists()  # the earlier strategy's masks are gone with the earlier export
    assert written["masks"]["latest"] == [str(out / "latest" / "step-1"), str(out / "latest" / "step-2")]
    assert all(Path(p).is_dir() for p in written["masks"]["latest"])
    recorded = json.loads((out / "continual.json").read_text())
    assert recorded["strategies"]["latest"]["steps"][0]["mask_dir"] == str(out / "latest" / "step-1")
    assert written["report"]["html"] == str(out / "report.html")
    assert _leftovers(tmp_path, "export") == []

    assert main(["continual", "--model", "tiny-llama", "--domains", "news,pydocs", "--strategies", "copal",
                 *TINY_CLI, "--out", str(out)]) == 0
    assert not (out / "latest").exists() and not (out / "report.html").exists()
    recorded = json.loads((out / "continual.json").read_text())
    assert recorded["strategies"]["copal"]["steps"][1]["mask_dir"] == str(out / "copal" / "step-2")


@pytest.mark.parametrize("command", [
    ["structured", "--model", "tiny-llama", "--calib", "news", "--eval", "news", *TINY_CLI, "--ratios", "0.2"],
    ["continual", "--model", "tiny-llama", "--domains", "news,pydocs", "--strategies", "latest", *TINY_CLI],
    ["recover", "--model", "tiny-llama", "--calib", "news", "--steps", "2", "--no-store"],
])
def test_the_commands_refuse_a_users_folder_untouched(command, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("a user's notes")
    assert main([*command, "--out", str(out)]) != 0
    assert "PruneScope did not write" in capsys.readouterr().err
    assert _snapshot(out) == {"notes.txt": b"a user's notes"}

"""Failures from below PruneScope (the store's database, the disk, Python's limits) reach a user as one sentence
and a non-zero exit, never a traceback; an unexpected failure says it is a bug and where its traceback is."""

from __future__ import annotations

import errno
import sqlite3

import pytest

from pruning_core.cli.main import main
from pruning_core.failures import explain


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err  # exactly one line
    return code, err


def test_a_corrupt_store_is_one_sentence(tmp_path, monkeypatch, capsys):
    (tmp_path / "prunescope.sqlite").write_bytes(b"not a database at all " * 20)
    monkeypatch.setenv("PRUNESCOPE_HOME", str(tmp_path))
    code, err = _cli(capsys, "jobs")
    assert code == 2 and "is damaged" in err and "PRUNESCOPE_HOME" in err


@pytest.mark.parametrize("sub", ["", "below"])
def test_a_file_shaped_home_is_one_sentence(tmp_path, monkeypatch, capsys, sub):
    home = tmp_path / "home"
    home.write_text("a file, not a folder")
    monkeypatch.setenv("PRUNESCOPE_HOME", str(home / sub) if sub else str(home))
    code, err = _cli(capsys, "jobs")
    assert code == 2 and "PRUNESCOPE_HOME" in err and ("is a file" in err or "cannot be created" in err)


@pytest.mark.parametrize("message, words", [
    ("database is locked", "stayed locked"),
    ("attempt to write a readonly database", "is read-only"),
    ("database or disk is full", "is full"),
    ("file is not a database", "is damaged"),
])
def test_store_errors_are_named(message, words):
    assert words in explain(sqlite3.OperationalError(message))


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only"), (errno.ENAMETOOLONG, "too long"),
    (errno.ENOTDIR, "is a file"), (errno.EACCES, "Permission denied"),
])
def test_file_system_errors_are_named(code, words):
    assert words in explain(OSError(code, "x", "/some/path"))


def test_too_deep_input_is_named_and_a_bug_is_reported_with_its_log(tmp_path, monkeypatch, capsys):
    assert "nested too deeply" in explain(RecursionError())
    assert explain(ValueError("x")) is None
    monkeypatch.setenv("PRUNESCOPE_HOME", str(tmp_path))
    import importlib

    cli_main = importlib.import_module("pruning_core.cli.main")

    def broken(args):
        raise ValueError("boom")

    args = cli_main.build_parser().parse_args(["jobs"])
    args.handler = broken
    monkeypatch.setattr(cli_main, "build_parser", lambda: type("P", (), {"parse_args": lambda self, a: args})())
    code, err = _cli(capsys, "jobs")
    assert code == 1 and "this is a bug" in err and "ValueError: boom" in err
    (log,) = (tmp_path / "logs").glob("failure-*.log")
    assert "Traceback" in log.read_text()


@pytest.mark.parametrize("damage, words", [("remove", "is incomplete"), ("truncate", "damaged or truncated")])
def test_a_model_folder_with_missing_or_truncated_weights_is_one_sentence(tmp_path, damage, words):
    from pruning_core.errors import ModelLoadError
    from pruning_core.models import load_model

    loaded = load_model("tiny-llama")
    folder = tmp_path / "model"
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    (weights,) = folder.glob("*.safetensors")
    if damage == "remove":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match=words) as exc:
        load_model(str(folder))
    assert "\n" not in str(exc.value)

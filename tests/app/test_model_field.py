"""The Setup page's model field reads only what a model folder holds at its top level and answers a missing path
and a folder that is no model with the same sentence (it is no way to probe the server's disk)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.services import models
from pruning_core.errors import ModelLoadError


def test_missing_and_non_model_paths_get_the_same_sentence(tmp_path, monkeypatch):
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "big.bin").write_bytes(b"x")

    def no_walk(self, pattern):  # an arbitrary folder (/usr) must not be walked on every rerun
        raise AssertionError("walked below a folder")

    monkeypatch.setattr(Path, "rglob", no_walk)
    said = {}
    for name, source in (("missing", str(tmp_path / "nope")), ("folder", str(tmp_path))):
        with pytest.raises(ModelLoadError) as exc:
            models.model_identity(source)
        said[name] = str(exc.value).replace(source, "<path>")
    assert said["missing"] == said["folder"] and "is not a model PruneScope can read" in said["folder"]


def test_a_model_folder_is_identified_by_its_top_level_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"12345")
    (tmp_path / "runs" / "old").mkdir(parents=True)
    (tmp_path / "runs" / "old" / "checkpoint.bin").write_bytes(b"x" * 1000)  # not part of the model
    identity = models.model_identity(str(tmp_path))
    assert identity["kind"] == "folder" and identity["size"] == 2 + 5

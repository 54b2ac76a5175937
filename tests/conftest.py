"""Shared test fixtures: an isolated PRUNESCOPE_HOME, tiny random models, and the embedded model (cached)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

# One thread per test process keeps timings stable on the 2-core CI machine; tiny models do not need more.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own PRUNESCOPE_HOME, so no test reads another's cached results."""
    home = tmp_path / "prunescope-home"
    home.mkdir()
    monkeypatch.setenv("PRUNESCOPE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def embedded_home(tmp_path_factory):
    """A home holding the converted embedded model, converted once per session (about 30 s the first time).

    The user's cache (~/.cache/prunescope) is reused read-only when it already has the conversion.
    """
    home = tmp_path_factory.mktemp("embedded-home")
    user_models = Path.home() / ".cache" / "prunescope" / "models"
    if user_models.is_dir():
        for folder in user_models.glob("embedded-*"):
            if (folder / ".complete").is_file():
                shutil.copytree(folder, home / "models" / folder.name)
    return home


@pytest.fixture(scope="session")
def embedded(embedded_home):
    """The embedded SmolLM2-135M model, loaded once per session (never mutate it: use applied_masks)."""
    from pruning_core.models import load_model

    return load_model("embedded", home=embedded_home)

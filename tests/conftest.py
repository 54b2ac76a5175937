"""Shared test fixtures: an isolated PRUNESCOPE_HOME, tiny random models, and the embedded model (cached)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One thread per test process keeps timings stable on the 2-core CI machine; tiny models do not need more.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]

# Stores are isolated per test (PRUNESCOPE_HOME below), but the converted embedded model is shared by every
# test, app server and job worker of the run: converting it costs ~30 s and the result never changes.
os.environ.setdefault("PRUNESCOPE_MODEL_CACHE", str(Path.home() / ".cache" / "prunescope" / "models"))


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own PRUNESCOPE_HOME, so no test reads another's cached results."""
    home = tmp_path / "prunescope-home"
    home.mkdir()
    monkeypatch.setenv("PRUNESCOPE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2-135M model, loaded once per session (never mutate it: use applied_masks)."""
    from pruning_core.models import load_model

    return load_model("embedded")

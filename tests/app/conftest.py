"""The environment of the dashboard's AppTests (their shared helpers are in tests/app/apptest_helpers.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def app_env(monkeypatch, tmp_path):
    """The pages' environment: the tiny random model by default, the test's own PRUNESCOPE_HOME (tmp_path,
    returned), and jobs run inline in the test process, so a click on Run finishes before the next check.

    Not autouse: the home-page and launcher tests check the default model and server environment themselves.
    A module asks for it with `pytestmark = pytest.mark.usefixtures("app_env")`.
    """
    monkeypatch.setenv("PRUNESCOPE_DEFAULT_MODEL", "tiny-llama")
    monkeypatch.setenv("PRUNESCOPE_HOME", str(tmp_path))
    monkeypatch.setenv("PRUNESCOPE_INLINE_JOBS", "1")
    return tmp_path

"""A store problem reads as the store's problem on every page, in one sentence, and no page crashes on it."""

from __future__ import annotations

import pytest

from tests.app.apptest_helpers import SMALL, page

pytestmark = pytest.mark.usefixtures("app_env")


@pytest.mark.parametrize("name", ["setup", "summary", "curves"])
def test_a_file_shaped_home_is_one_sentence_on_the_page(tmp_path, monkeypatch, name):
    home = tmp_path / "home-file"
    home.write_text("not a folder")
    monkeypatch.setenv("PRUNESCOPE_HOME", str(home))
    at = page(name, SMALL)
    assert not at.exception, [e.value for e in at.exception]
    errors = [str(e.value) for e in at.error]
    assert any("PRUNESCOPE_HOME to a folder" in e for e in errors), errors
    assert not any("Setup page" in e for e in errors)  # a store problem is not a settings problem


def test_a_corrupt_store_is_named_on_the_page(tmp_path, monkeypatch):
    (tmp_path / "prunescope.sqlite").write_bytes(b"not a database " * 50)
    monkeypatch.setenv("PRUNESCOPE_HOME", str(tmp_path))
    at = page("summary", SMALL)
    assert not at.exception
    assert any("is damaged" in str(e.value) for e in at.error), [str(e.value) for e in at.error]

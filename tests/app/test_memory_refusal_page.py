"""A run whose estimated peak memory exceeds the memory available is refused on the page before it starts: the
estimate line warns beside the estimate, the Run button shows one error sentence (estimate, what is available, what to change, in the dashboard's words)
and no job is started; under the limit the same click runs."""

from __future__ import annotations

import pytest

pytest.importorskip("streamlit")
from tests.app.apptest_helpers import errors, ok, page  # noqa: E402

pytestmark = pytest.mark.usefixtures("app_env")  # tiny model, a temporary PRUNESCOPE_HOME, inline jobs


def _structured_jobs() -> list:
    from pruning_core.store import Store

    return Store().execute("SELECT state FROM jobs WHERE kind = 'structured'")


def test_a_structured_run_over_the_memory_limit_is_refused_in_one_sentence_and_nothing_starts(monkeypatch):
    monkeypatch.setenv("PRUNESCOPE_MEMORY_LIMIT", "1MB")
    at = ok(page("structured", structured_ratios=[0.2]))
    before = [str(w.value) for w in at.warning if "run needs about" in str(w.value)]
    assert len(before) == 1 and "1.0 MB is available" in before[0]  # said beside the estimate, before the click
    at.button(key="structured_run").click().run()
    said = errors(at)
    assert len(said) == 1, said
    sentence = said[0]
    assert "This structured run needs about" in sentence and "1.0 MB is available (PRUNESCOPE_MEMORY_LIMIT=1MB)" \
        in sentence
    assert "@bfloat16" in sentence and "Calibration windows" in sentence and "--device cuda" in sentence
    assert not at.exception and _structured_jobs() == []

    monkeypatch.setenv("PRUNESCOPE_MEMORY_LIMIT", "1TB")
    at.button(key="structured_run").click().run()
    ok(at)
    assert [row["state"] for row in _structured_jobs()] == ["done"]

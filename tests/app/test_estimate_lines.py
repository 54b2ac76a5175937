"""Every run a page can start shows its estimate before it starts (journey: Structured, Continual, the Summary's
budget search and Export showed none)."""

from __future__ import annotations

import pytest

pytest.importorskip("streamlit")

from tests.app.apptest_helpers import ok, page  # noqa: E402

pytestmark = pytest.mark.usefixtures("app_env")


def _estimate_lines(at) -> list[str]:
    return [c.value for c in at.caption if "Estimated time" in c.value]


@pytest.mark.parametrize("name", ["structured", "continual", "export"])
def test_the_form_shows_an_estimate_line(name):
    at = ok(page(name))
    (line,) = _estimate_lines(at)
    assert "peak memory" in line and "on this machine" in line


def test_the_summary_budget_search_shows_an_estimate_per_method_before_its_button():
    at = ok(page("summary", summary_budget_methods=["wanda", "magnitude"]))
    assert any(b.key == "summary_budget_run" for b in at.button)  # no sweep yet: the search answers on its own
    lines = _estimate_lines(at)
    assert len(lines) == 2 and all("at most" in line for line in lines)

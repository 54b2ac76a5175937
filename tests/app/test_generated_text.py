"""Generated text is shown as text on every page that shows it (journey, issue 26 point 4: the What-if page drew a
model's "# Test the function" as a giant heading and code lost its layout). The one widget every page uses for it,
`widgets.side_by_side`, is driven by AppTest with a generation that holds Markdown."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
GENERATED = "# Test the function\ndef f(x):\n    return **x**  # <b>bold</b>"


def _script(generated: str) -> None:
    from app import widgets

    widgets.side_by_side({"prompt": "# Write a test", "dense": generated, "pruned": "- a list?\n\n## no"},
                         "**Pruned model** (50 % sparse)")


def test_generated_text_with_markdown_is_shown_as_text():
    at = AppTest.from_function(_script, default_timeout=30, args=(GENERATED,)).run()
    assert not at.exception, [e.value for e in at.exception]
    texts = [str(t.value) for t in at.text]
    assert "Prompt: “# Write a test”" in texts and GENERATED in texts and "- a list?\n\n## no" in texts
    markdown = [str(m.value) for m in at.markdown]
    assert markdown == ["**Dense model**", "**Pruned model** (50 % sparse)"]  # only the headings we wrote


def test_every_page_that_shows_generated_text_uses_the_text_widget():
    """A page that drew a sample with st.markdown would bring the defect back: each one goes through
    widgets.side_by_side."""
    for path in (REPO / "pages").glob("*.py"):
        source = path.read_text()
        for key in ('["samples"]', '["generations"]', '"dense"]', '"pruned"]'):
            for line in source.splitlines():
                if key in line and "st.markdown" in line:
                    raise AssertionError(f"{path.name}: {line.strip()}")

"""The home page in a real headless Chromium: it renders, shows no error, and is screenshotted."""

from __future__ import annotations


import pytest

pytestmark = pytest.mark.browser


def test_home_renders_without_error(page, app_url, artifacts, wait_for_app):
    page.goto(app_url, wait_until="domcontentloaded")
    wait_for_app(page, "How far can this language model be pruned")

    assert page.title() == "PruneScope"
    assert page.locator("h1", has_text="PruneScope").count() >= 1
    assert page.get_by_text("SmolLM2-135M-Instruct", exact=False).count() >= 1
    body = page.inner_text("body")
    assert "Traceback" not in body
    assert page.locator('[data-testid="stException"]').count() == 0

    page.screenshot(path=str(artifacts / "home.png"), full_page=True)
    assert (artifacts / "home.png").stat().st_size > 10_000

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


def test_home_cards_are_links_in_the_menus_order(page, app_url, wait_for_app):
    """The cards open their pages, listed as the sidebar's menu lists them (journey, issue 26 point 8)."""
    from app.main import available_pages

    page.goto(app_url, wait_until="domcontentloaded")
    wait_for_app(page, "How it works")
    main = page.locator('[data-testid="stMain"]')
    cards = main.locator('a[data-testid="stPageLink-NavLink"]')
    cards.first.wait_for(state="visible")
    last = lambda href: (href or "").rstrip("/").rsplit("/", 1)[-1]  # noqa: E731  "http://host/setup" -> "setup"
    shown = [last(cards.nth(i).get_attribute("href")) for i in range(cards.count())]
    menu = [spec for spec in available_pages() if not spec.default]
    assert shown == [spec.url_path for spec in menu]
    sidebar = page.locator('[data-testid="stSidebarNav"] a')
    in_menu = [last(sidebar.nth(i).get_attribute("href")) for i in range(sidebar.count())]
    assert [h for h in in_menu if h in shown] == shown  # the same pages, in the menu's order
    main.get_by_text(f"2 · {menu[1].title}").click()
    page.wait_for_url(f"**/{menu[1].url_path}")
    wait_for_app(page, menu[1].title)

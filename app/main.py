"""Streamlit entry point of the PruneScope dashboard: `streamlit run app/main.py` (or `prunescope ui`).

Frames every page: page config, theme CSS, logo, the sidebar's model line, and `st.navigation` over the
pages listed in `PAGES`. A page appears as soon as its file exists under `pages/`, so adding a page is
writing the file (and, if it is new, one `PageSpec` line below). Every page also runs on its own
(`streamlit run pages/home.py`, `AppTest.from_file("pages/home.py")`).

Importing this module has no Streamlit side effects (Streamlit runs it as `__main__`), so tests and other
modules can read `PAGES` and `available_pages()`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `streamlit run app/main.py` puts app/ on sys.path, not the repo root
    sys.path.insert(0, str(REPO_ROOT))


@dataclass(frozen=True)
class PageSpec:
    """One dashboard page: its script (relative to the repository root), menu title and icon."""

    path: str  # e.g. "pages/home.py"
    title: str
    icon: str  # a Material icon (":material/name:") or an emoji
    url_path: str  # the page's URL (http://host:port/<url_path>); "" only for the default page
    default: bool = False


#: The dashboard's pages, in menu order. Pages whose file does not exist yet are left out of the menu.
PAGES: list[PageSpec] = [
    PageSpec("pages/home.py", "Home", ":material/home:", "", default=True),
    PageSpec("pages/setup.py", "Setup", ":material/tune:", "setup"),
    PageSpec("pages/sensitivity.py", "Sensitivity", ":material/grid_on:", "sensitivity"),
    PageSpec("pages/allocation.py", "Allocation", ":material/view_quilt:", "allocation"),
    PageSpec("pages/curves.py", "Curves", ":material/show_chart:", "curves"),
    PageSpec("pages/what_if.py", "What-if", ":material/science:", "what-if"),
    PageSpec("pages/structured.py", "Structured", ":material/content_cut:", "structured"),
    PageSpec("pages/frontier.py", "Frontier", ":material/straighten:", "frontier"),
    PageSpec("pages/recovery.py", "Recovery", ":material/healing:", "recovery"),
    PageSpec("pages/continual.py", "Continual", ":material/timeline:", "continual"),
    PageSpec("pages/summary.py", "Summary", ":material/dashboard:", "summary"),
    PageSpec("pages/export.py", "Export", ":material/download:", "export"),
]

PAGE_TITLE = "PruneScope"
LOGO = REPO_ROOT / "assets" / "logo.svg"
ICON = REPO_ROOT / "assets" / "icon.svg"


def available_pages() -> list[PageSpec]:
    """The entries of `PAGES` whose script exists, in menu order."""
    return [spec for spec in PAGES if (REPO_ROOT / spec.path).is_file()]


def main() -> None:
    """Draw the frame shared by all pages and run the selected page."""
    import streamlit as st

    from app.launch import default_model
    from app.theme import inject_css
    from pruning_core.errors import PruneScopeError

    st.set_page_config(page_title=PAGE_TITLE, page_icon=str(ICON), layout="wide",
                       initial_sidebar_state="auto")
    inject_css()
    st.logo(str(LOGO), icon_image=str(ICON), size="large")

    pages = [
        # Absolute paths: page paths are resolved against app/, the entry script's folder.
        st.Page(str(REPO_ROOT / spec.path), title=spec.title, icon=spec.icon,
                url_path=spec.url_path or None, default=spec.default)
        for spec in available_pages()
    ]
    current = st.navigation(pages, position="sidebar")
    with st.sidebar:
        st.caption(f"Model: **{default_model()}**")
    try:
        current.run()
    except PruneScopeError as error:
        # Expected, actionable problems (bad file, offline hub id, ...): one short message, no traceback.
        # Anything else is a bug: it propagates, so AppTest's `at.exception` sees it, and users get
        # Streamlit's redacted notice (client.showErrorDetails = "none" in .streamlit/config.toml).
        st.error(str(error), icon=":material/error:")


if __name__ == "__main__":
    main()

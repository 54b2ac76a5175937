"""The dashboard's entry point, home page and launcher, driven by Streamlit's AppTest (no browser)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from app import launch  # noqa: E402
from app.main import PAGES, available_pages  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
HOME = str(REPO_ROOT / "pages" / "home.py")
MAIN = str(REPO_ROOT / "app" / "main.py")


def all_text(at: AppTest) -> str:
    parts = [e.value for e in at.markdown] + [e.value for e in at.caption] + [e.value for e in at.info]
    return "\n".join(str(p) for p in parts)


def test_home_page_runs_alone_and_explains_itself(monkeypatch):
    monkeypatch.delenv(launch.MODEL_ENV, raising=False)
    at = AppTest.from_file(HOME, default_timeout=30).run()
    assert not at.exception
    assert at.title[0].value == "PruneScope"
    text = all_text(at)
    assert "perplexity" in text.lower()
    assert "<b>embedded</b>" in text
    assert "SmolLM2-135M-Instruct" in text
    assert len(at.expander) == 2


def test_home_page_shows_the_model_passed_by_the_launcher(monkeypatch):
    monkeypatch.setenv(launch.MODEL_ENV, "/models/my-llama")
    at = AppTest.from_file(HOME, default_timeout=30).run()
    assert not at.exception
    text = all_text(at)
    assert "/models/my-llama" in text
    assert "SmolLM2-135M-Instruct, a Llama" not in text  # the embedded description is not shown


def test_home_page_shows_no_chart_before_anything_is_measured():
    at = AppTest.from_file(HOME, default_timeout=30).run()
    assert not at.get("plotly_chart")


def test_main_entry_point_runs_the_home_page_through_navigation(monkeypatch):
    monkeypatch.delenv(launch.MODEL_ENV, raising=False)
    at = AppTest.from_file(MAIN, default_timeout=30).run()
    assert not at.exception
    assert at.title[0].value == "PruneScope"
    assert "Model: **embedded**" in [c.value for c in at.sidebar.caption]


def test_page_registry_lists_existing_pages_home_first():
    paths = [spec.path for spec in PAGES]
    assert len(set(paths)) == len(paths) and len({s.url_path for s in PAGES}) == len(PAGES)
    assert [s for s in PAGES if s.default] == [PAGES[0]] and PAGES[0].path == "pages/home.py"
    assert all(spec.url_path for spec in PAGES if not spec.default)
    existing = available_pages()
    assert existing[0].path == "pages/home.py"
    assert all((REPO_ROOT / spec.path).is_file() for spec in existing)


def test_streamlit_command_is_local_headless_and_private():
    cmd = launch.streamlit_command(port=8765)
    assert cmd[:4] == [sys.executable, "-m", "streamlit", "run"]
    assert Path(cmd[4]) == REPO_ROOT / "app" / "main.py" and Path(cmd[4]).is_absolute()
    flags = dict(zip(cmd[5::2], cmd[6::2]))
    assert flags == {"--server.port": "8765", "--server.address": "127.0.0.1", "--server.headless": "true",
                     "--browser.gatherUsageStats": "false"}
    assert dict(zip(*[iter(launch.streamlit_command(host="0.0.0.0")[5:])] * 2))["--server.address"] == "0.0.0.0"
    with pytest.raises(ValueError, match="port"):
        launch.streamlit_command(port=70000)


def test_ui_environment_carries_the_model_as_an_absolute_path(tmp_path, monkeypatch):
    env = launch.ui_environment("embedded", base={})
    assert env[launch.MODEL_ENV] == "embedded"
    assert str(REPO_ROOT) in env["PYTHONPATH"].split(":")
    folder = tmp_path / "my-model"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    env = launch.ui_environment("my-model", base={"PRUNESCOPE_HOME": "home"})
    assert env[launch.MODEL_ENV] == str(folder)
    assert env["PRUNESCOPE_HOME"] == str(tmp_path / "home")
    assert launch.ui_environment("HuggingFaceTB/SmolLM2-360M", base={})[launch.MODEL_ENV] == "HuggingFaceTB/SmolLM2-360M"


def test_default_model_reads_the_environment(monkeypatch):
    monkeypatch.delenv(launch.MODEL_ENV, raising=False)
    assert launch.default_model() == "embedded"
    monkeypatch.setenv(launch.MODEL_ENV, "  ")
    assert launch.default_model() == "embedded"
    monkeypatch.setenv(launch.MODEL_ENV, "gpt2")
    assert launch.default_model() == "gpt2"


def test_home_counts_what_the_store_holds_for_the_model(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNESCOPE_HOME", str(tmp_path))
    monkeypatch.setenv(launch.MODEL_ENV, "tiny-llama")
    from tests.app.apptest_helpers import stored_sweep

    assert "Nothing has been measured for this model yet" in all_text(AppTest.from_file(HOME, default_timeout=30).run())
    stored_sweep()
    text = all_text(AppTest.from_file(HOME, default_timeout=30).run())
    assert "Stored for this model: 1 sweep." in text and "Nothing has been measured" not in text


def test_home_cards_link_to_every_page_in_the_menus_order(monkeypatch):
    """Each card opens its page, in the order of the menu (journey, issue 26 point 8: the cards could not be clicked
    and listed the pages in an order of their own)."""
    monkeypatch.delenv(launch.MODEL_ENV, raising=False)
    at = AppTest.from_file(MAIN, default_timeout=30).run()
    assert not at.exception
    links = [link.proto for link in at.get("page_link")]
    menu = [spec for spec in available_pages() if not spec.default]
    assert [link.page for link in links] == [spec.url_path for spec in menu]
    assert [link.label for link in links] == [f"{n} · {spec.title}" for n, spec in enumerate(menu, 1)]
    assert all(link.page_script_hash for link in links)  # registered pages: a click switches to them
    # On its own (no menu to link into) the page names the same pages in the same order.
    alone = AppTest.from_file(HOME, default_timeout=30).run()
    assert not alone.exception and not alone.get("page_link")
    named = [m.value for m in alone.markdown if m.value.startswith("**:blue[")]
    assert named == [f"**:blue[{n} · {spec.title}]**" for n, spec in enumerate(menu, 1)]

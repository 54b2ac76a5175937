"""Real-browser harness: the dashboard served by `streamlit run` on a free local port, headless Chromium.

Fixtures (session-scoped, so one server and one browser serve all browser tests):
  * `app_url`   - starts `app/launch.streamlit_command()` bound to 127.0.0.1 on a free port, waits for
                  `/_stcore/health`, yields "http://127.0.0.1:PORT", and always stops the server
                  (its whole process group) afterwards;
  * `browser`   - Playwright's chromium driving Debian's /usr/bin/chromium (`make browser-deps`);
  * `page`      - a fresh 1440x900 page per test;
  * `artifacts` - the folder for screenshots, `test-artifacts/` (gitignored);
  * `wait_for_app` - a function (page, text) that waits until the app shows `text` and is idle;
  * `plotly_charts` - a function (page, min_count) returning what each drawn Plotly chart holds.
The tests are skipped, with the reason, when Chromium or Playwright is missing.
Set PRUNESCOPE_BROWSER_MODEL to start the app on another model than "embedded".
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest

from app.launch import REPO_ROOT, streamlit_command, ui_environment

CHROMIUM = Path(os.environ.get("PRUNESCOPE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",  # tests run as root in containers, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"
SERVER_START_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"streamlit not healthy after {timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    """Stop the server and anything it started (job workers): its own process group, TERM then KILL."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


@contextlib.contextmanager
def tiny_model_server(home: Path, log_path: Path, prepare: Callable[[], object]) -> Iterator[tuple[str, object]]:
    """(url, what `prepare` returned): a dashboard on the tiny model whose PRUNESCOPE_HOME is `home`, started
    after `prepare()` filled that store (run with PRUNESCOPE_HOME set to `home`, restored after). The shared
    `app_url` serves the embedded model and a store a test cannot write to before its server starts."""
    before = os.environ.get("PRUNESCOPE_HOME")
    os.environ["PRUNESCOPE_HOME"] = str(home)
    try:
        prepared = prepare()
        env = ui_environment("tiny-llama")
    finally:
        if before is None:
            os.environ.pop("PRUNESCOPE_HOME", None)
        else:
            os.environ["PRUNESCOPE_HOME"] = before
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        process = subprocess.Popen(streamlit_command(port=port, host="127.0.0.1", model="tiny-llama"),
                                   cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        _wait_healthy(url, process, log_path, SERVER_START_TIMEOUT_S)
        yield url, prepared
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def app_url(artifacts: Path, tmp_path_factory: pytest.TempPathFactory):
    """The running dashboard's base URL; the server is stopped however the session ends."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    model = os.environ.get("PRUNESCOPE_BROWSER_MODEL", "embedded")
    env = ui_environment(model)
    # A private store per test session: the browser tests never see a developer's own runs.
    env.setdefault("PRUNESCOPE_HOME", str(tmp_path_factory.mktemp("prunescope-home")))
    log_path = artifacts / "streamlit-server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            streamlit_command(port=port, host="127.0.0.1", model=model),
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, so _stop reaches every child
        )
    try:
        _wait_healthy(url, process, log_path, SERVER_START_TIMEOUT_S)
        yield url
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (`make browser-deps`) to run browser tests")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not importable: install the dev extras (`pip install -e .[dev]`)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture()
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1440, "height": 900}, device_scale_factor=1)
    context.set_default_timeout(30_000)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


def _wait_for_app(page, text: str, timeout_ms: int = 30_000) -> None:
    """Wait until Streamlit has rendered `text` and finished the script run (no 'Running...' widget).
    On a timeout the error carries what the page showed instead (its text's end, and a screenshot in
    test-artifacts/), so a failure on CI says why the page never got there."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.get_by_text(text, exact=False).first.wait_for(state="visible", timeout=timeout_ms)
        page.wait_for_function(
            "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms
        )
    except PlaywrightTimeout as error:
        raise AssertionError(f"waited {timeout_ms / 1000:.0f} s for {text!r} on {page.url}; the page showed:\n"
                             f"{_page_text_for_failure(page)}") from error


def _page_text_for_failure(page) -> str:
    """The end of the page's visible text (the part a failure needs) and a screenshot beside the artifacts."""
    try:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "timeout.png"), full_page=True)
        body = page.inner_text("body", timeout=10_000)
    except Exception as error:  # noqa: BLE001 - the page itself may be gone; say so instead
        return f"(the page could not be read: {error})"
    status = page.locator('[data-testid="stStatusWidget"]').count()
    return ("(Streamlit still running) " if status else "") + body[-3000:]


@pytest.fixture(scope="session")
def wait_for_app():
    """`wait_for_app(page, text, timeout_ms=30_000)`: block until the app shows `text` and is idle."""
    return _wait_for_app


_PLOTLY_SUMMARY_JS = """
() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => ({
  title: (gd.layout && gd.layout.title && gd.layout.title.text) || '',
  types: (gd.data || []).map(t => t.type || 'scatter'),
  names: (gd.data || []).map(t => t.name || ''),
  points: (gd.data || []).reduce((n, t) => n + (t.z ? t.z.flat().length : (t.y ? t.y.length : 0)), 0),
  svg_marks: gd.querySelectorAll('.heatmaplayer image, .scatterlayer path.point, .barlayer path').length,
}))
"""


def _plotly_charts(page, min_count: int = 1, timeout_ms: int = 30_000) -> list[dict]:
    """Summaries of the Plotly charts drawn on the page, read from plotly.js's own graph divs.

    Waits until at least `min_count` charts exist. Each summary: title, trace types and names, the number
    of data values (heatmap cells or y values) and of drawn SVG marks (proof the chart really rendered).
    """
    page.wait_for_function(
        f"() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= {int(min_count)}",
        timeout=timeout_ms,
    )
    return page.evaluate(_PLOTLY_SUMMARY_JS)


@pytest.fixture(scope="session")
def plotly_charts():
    """`plotly_charts(page, min_count=1)`: list of {title, types, names, points, svg_marks} per chart."""
    return _plotly_charts


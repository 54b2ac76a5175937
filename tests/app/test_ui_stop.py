"""`prunescope ui` stopped with SIGTERM (as a service manager or `timeout` stops it) stops its Streamlit server
too: the port is free again and no server process is left. A real server on a free port, started the way a
user starts it (`python -m pruning_core.cli.main ui`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90.0  # a cold Streamlit import on a busy 2-core machine
STOP_TIMEOUT_S = 60.0  # a bound on waiting on a busy machine, not a speed claim (the launcher kills at 10 s)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.extend(int(x) for x in text)
    return out


def _exists(pid: int) -> bool:
    """Whether `pid` is a live process (a defunct one waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the server process")
def test_sigterm_to_prunescope_ui_stops_the_server_and_frees_the_port(tmp_path):
    port = _free_port()
    env = {**os.environ, "PRUNESCOPE_HOME": str(tmp_path / "home")}
    launcher = subprocess.Popen([sys.executable, "-m", "pruning_core.cli.main", "ui", "--port", str(port),
                                 "--model", "tiny-llama"], cwd=REPO_ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers: list[int] = []
    try:
        assert _wait(lambda: _listening(port) or launcher.poll() is not None, START_TIMEOUT_S), "server never listened"
        assert launcher.poll() is None, f"prunescope ui exited early with {launcher.returncode}"
        servers = _children(launcher.pid)
        assert servers, "the launcher has no Streamlit child"

        launcher.send_signal(signal.SIGTERM)  # only the launcher, as `timeout` or systemd's main-pid kill does
        launcher.wait(timeout=STOP_TIMEOUT_S + 5)
        assert launcher.returncode == 0  # stopped on purpose
        assert _wait(lambda: not _listening(port), STOP_TIMEOUT_S), "the port is still held after SIGTERM"
        assert _wait(lambda: not any(_exists(pid) for pid in servers), STOP_TIMEOUT_S), "server process left running"
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        for pid in servers:  # only the server this test started
            if _exists(pid):
                os.kill(pid, signal.SIGKILL)

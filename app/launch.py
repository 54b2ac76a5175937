"""Start the dashboard: the command line behind `prunescope ui [--port P] [--host H] [--model M]`.

Streamlit is started as a child process (``python -m streamlit run app/main.py``) from the repository
root, so that `.streamlit/config.toml` (theme, headless, no usage stats) is always read, whatever the
user's working directory. The model choice reaches the app through the environment variable
``PRUNESCOPE_DEFAULT_MODEL`` (Streamlit has no way to pass arguments to a script run).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

#: Environment variable that carries `--model` to the app (read by pages through `default_model()`).
MODEL_ENV = "PRUNESCOPE_DEFAULT_MODEL"
#: The executor the dashboard's jobs run on, as `prunescope ui` was told (JSON of `ExecutorConfig.to_dict()`).
EXECUTOR_ENV = "PRUNESCOPE_UI_EXECUTOR"
DEFAULT_MODEL = "embedded"

#: Seconds the Streamlit server gets to shut down after a stop signal before it is killed.
STOP_GRACE_S = 10.0
#: Signals that stop `prunescope ui` and are passed on to the server: Ctrl+C, a service manager or `timeout`
#: (SIGTERM), a closed terminal (SIGHUP).
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

REPO_ROOT = Path(__file__).resolve().parents[1]
MAIN_SCRIPT = REPO_ROOT / "app" / "main.py"


def default_model() -> str:
    """The model the dashboard preselects: `PRUNESCOPE_DEFAULT_MODEL`, else "embedded" (SmolLM2-135M)."""
    return os.environ.get(MODEL_ENV, "").strip() or DEFAULT_MODEL


def streamlit_command(port: int = 8501, host: str = "127.0.0.1", model: str = DEFAULT_MODEL) -> list[str]:
    """The argv that starts the dashboard on `host:port` (the model goes through `ui_environment`).

    `host` defaults to 127.0.0.1: the dashboard can load arbitrary local files and models, so it is not
    exposed on the network unless the user asks for it (e.g. ``--host 0.0.0.0``).
    """
    if not 0 < int(port) < 65536:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    return [
        sys.executable, "-m", "streamlit", "run", str(MAIN_SCRIPT),
        "--server.port", str(int(port)),
        "--server.address", host,
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
    ]


def _absolute_if_path(model: str) -> str:
    """A model given as a relative local path stays valid once the app runs from the repository root."""
    candidate = Path(model).expanduser()
    if model != DEFAULT_MODEL and candidate.exists():
        return str(candidate.resolve())
    return model


def ui_environment(model: str = DEFAULT_MODEL, base: dict[str, str] | None = None,
                   executor: dict | None = None) -> dict[str, str]:
    """Environment for the Streamlit child: `base` (default os.environ) plus the model choice and the executor
    its jobs run on (`ExecutorConfig.to_dict()` of `prunescope ui --executor ...`, as JSON; none = local).

    Relative paths in `model` and in ``PRUNESCOPE_HOME`` are made absolute, because the child runs from
    the repository root, not from the user's directory.
    """
    env = dict(os.environ if base is None else base)
    env[MODEL_ENV] = _absolute_if_path(model)
    if executor is not None:
        env[EXECUTOR_ENV] = json.dumps(executor, sort_keys=True)
    if env.get("PRUNESCOPE_HOME"):
        env["PRUNESCOPE_HOME"] = str(Path(env["PRUNESCOPE_HOME"]).expanduser().resolve())
    # The app imports `app` and `pruning_core` from the checkout even when the project is not pip-installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    return env


def run_ui(port: int = 8501, host: str = "127.0.0.1", model: str = DEFAULT_MODEL, executor: dict | None = None) -> int:
    """Run the dashboard in the foreground until it is stopped; returns Streamlit's exit code, or 0 when it
    was stopped on purpose (Ctrl+C, SIGTERM, SIGHUP).

    A stop signal is passed on to the Streamlit server, which is then waited for (killed after
    `STOP_GRACE_S`), so stopping this command always stops the dashboard and frees its port: a service
    manager or `timeout` signals only this process, and the server used to keep running without it.
    """
    command = streamlit_command(port=port, host=host, model=model)
    print(f"PruneScope dashboard: http://{host}:{port}  (model: {model}; Ctrl+C to stop)", flush=True)
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=ui_environment(model, executor=executor))
    stopping: list[float] = []  # monotonic time of the first stop signal

    def pass_on(signum: int, frame) -> None:  # noqa: ARG001 - signal handler signature
        if not stopping:
            stopping.append(time.monotonic())
        if process.poll() is None:
            # Streamlit stops its server cleanly on SIGINT/SIGTERM; a terminal's Ctrl+C may already have
            # reached it (same process group): a second request is harmless.
            process.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)

    # Signal handlers can only be set in the main thread; elsewhere (tests calling run_ui in a thread) the
    # server is still waited for and killed on the way out.
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, pass_on) for sig in FORWARDED_SIGNALS}
    try:
        while True:
            try:
                code = process.wait(timeout=0.2)
                return 0 if stopping else code
            except subprocess.TimeoutExpired:
                if stopping and time.monotonic() - stopping[0] > STOP_GRACE_S:
                    process.kill()
                    process.wait()
                    return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if process.poll() is None:  # leaving for any other reason (an exception): never orphan the server
            process.terminate()
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

"""The engine's glibc malloc settings reach the processes it starts; a user's own values are kept."""

import os
import subprocess
import sys

import pytest

from pruning_core.devices.allocator import SETTINGS, with_allocator_settings
from pruning_core.jobs.runner import worker_environment


def test_settings_are_added_and_a_users_value_is_kept():
    env = with_allocator_settings({"PATH": "/bin", "MALLOC_TRIM_THRESHOLD_": "12345"})
    assert env["PATH"] == "/bin" and env["MALLOC_TRIM_THRESHOLD_"] == "12345"
    assert env["MALLOC_MMAP_THRESHOLD_"] == SETTINGS["MALLOC_MMAP_THRESHOLD_"] == str(32 * 2**20)


def test_job_workers_start_with_the_settings(tmp_path, monkeypatch):
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    env = worker_environment(tmp_path / "store.sqlite")
    assert {name: env[name] for name in SETTINGS} == SETTINGS
    assert env["PRUNESCOPE_STORE"] == str(tmp_path / "store.sqlite")


_PRINT_AFTER_REEXEC = (
    "import os, sys\n"
    "from pruning_core.devices.allocator import SETTINGS, reexec_with_allocator_settings\n"
    "print('started', flush=True)\n"
    "reexec_with_allocator_settings()\n"
    "print(sys.argv[1:], [os.environ.get(n) for n in SETTINGS])\n"
)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's settings: the re-execution happens on Linux only")
def test_a_command_restarts_once_with_the_settings_and_its_arguments():
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    out = subprocess.run([sys.executable, "-c", _PRINT_AFTER_REEXEC, "a", "--b"], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout.splitlines()
    # Started twice (the second time under the settings), finished once, with the same arguments.
    assert out == ["started", "started", f"['a', '--b'] {list(SETTINGS.values())}"]
    mine = dict(env, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, "-c", _PRINT_AFTER_REEXEC], env=mine, capture_output=True, text=True,
                         timeout=60, check=True).stdout.splitlines()
    assert out == ["started", "[] ['65536', '131072']"]  # already set by the user: no restart, values kept


def test_the_console_script_restarts_but_a_call_from_python_does_not(monkeypatch):
    from pruning_core.cli import main as cli_main

    calls = []
    module = sys.modules["pruning_core.cli.main"]  # the module (the package re-exports its `main` function)
    monkeypatch.setattr(module, "reexec_with_allocator_settings", lambda: calls.append(1))
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["prunescope", "--help"])
    with pytest.raises(SystemExit):
        cli_main()
    assert calls == [1]

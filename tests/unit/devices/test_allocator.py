"""The engine's glibc malloc settings reach the processes it starts; a user's own values are kept."""

import os
import subprocess
import sys

import pytest

from pruning_core.devices.allocator import SETTINGS, _malloc_trim, with_allocator_settings
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


_FREED_PAGES_RETURN = (
    "import os, torch\n"
    "from pruning_core.devices.allocator import release_free_memory\n"
    "def resident():\n"
    "    with open('/proc/self/statm') as f:\n"
    "        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
    "blocks = [torch.ones(2 * 2**20) for _ in range(40)]  # 40 x 8 MB, below the 32 MB threshold: the heap\n"
    "pin = torch.ones(1024)  # a small long-lived block above them keeps the heap from shrinking by itself\n"
    "before = resident()\n"
    "del blocks\n"
    "kept = resident()\n"
    "released = release_free_memory()\n"
    "print(released, round((before - kept) / 2**20), round((kept - resident()) / 2**20))\n"
)


@pytest.mark.skipif(_malloc_trim() is None, reason="needs glibc's malloc_trim (not in musl, macOS or Windows)")
def test_the_heaps_free_pages_go_back_to_the_system_when_released():
    env = with_allocator_settings({k: v for k, v in os.environ.items() if k not in SETTINGS})
    out = subprocess.run([sys.executable, "-c", _FREED_PAGES_RETURN], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    released, freed_by_del, freed_by_release = out[0], int(out[1]), int(out[2])
    assert released == "True"
    assert freed_by_del < 100  # under the engine's settings freed blocks stay resident ...
    assert freed_by_release > 250  # ... until they are released (320 MB were freed)


def test_the_walk_releases_free_memory_once_per_layer(monkeypatch):
    import torch

    from pruning_core import walk
    from pruning_core.models.tiny import tiny_model

    loaded = tiny_model("llama")
    calls = []
    monkeypatch.setattr(walk, "release_free_memory", lambda: calls.append(1) or True)
    inputs = walk.capture_layer_inputs(loaded, torch.randint(0, 32, (2, 16)), batch_size=2)
    walk.walk_layers(loaded, inputs, lambda index, layer, stats: False, need="act_sq")
    assert len(calls) == len(loaded.adapter.decoder_layers(loaded.model))

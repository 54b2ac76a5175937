"""What a result must record to be reproducible: library versions and machine facts."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import sys

import torch

_LIBRARIES = ("torch", "transformers", "safetensors", "gensim", "numpy", "lm_eval", "peft")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that determine results ("absent" if not installed); a fresh dict."""
    return dict(_installed_versions())


@functools.lru_cache(maxsize=1)
def _installed_versions() -> dict[str, str]:
    # Read once per process: each `importlib.metadata.version` parses a package's metadata file (~3 ms), and every
    # sweep point's store key asks for them, which made planning a 30,000-point grid cost minutes.
    from pruning_core import __version__

    versions = {"prunescope": __version__, "python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def environment() -> dict:
    """Library versions plus machine facts (platform, CPU threads, accelerator)."""
    env = library_versions()
    env.update({
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "argv": " ".join(sys.argv[:1]),
    })
    return env

"""Fixtures of the Ray tests: one local Ray per test module, and where its PruneScope workers are."""

from __future__ import annotations

import logging
import time

import pytest


@pytest.fixture(scope="module")
def ray():
    """One local Ray of 2 CPUs for the module (the executors join it instead of starting their own)."""
    ray = pytest.importorskip("ray")
    from pruning_core.executors.ray_workers import start_local_ray

    start_local_ray(ray, 2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


def ray_workers(ray) -> list[str]:
    """Names of the live PruneScope worker actors."""
    from pruning_core.executors.ray_workers import ACTOR_PREFIX

    return [name for name in ray.util.list_named_actors() if name.startswith(ACTOR_PREFIX)]


def ray_workers_gone(ray, timeout_s: float = 20.0) -> bool:
    """Whether every worker actor has ended within `timeout_s` (ray.kill is asynchronous)."""
    deadline = time.monotonic() + timeout_s
    while ray_workers(ray) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not ray_workers(ray)

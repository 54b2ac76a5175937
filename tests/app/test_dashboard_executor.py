"""The dashboard's jobs carry the executor `prunescope ui` was started with, in their specs (never read from
the environment deep in the library), and the executor changes no job key."""

from __future__ import annotations

import json

from apptest_helpers import SMALL

from app.launch import EXECUTOR_ENV, ui_environment
from app.services import budget, continual, sensitivity, sweep
from pruning_core.jobs.runner import job_key

RAY = {"kind": "ray", "address": None, "workers": 2, "gpus_per_task": 0.0}


def _specs() -> dict:
    return {"sweep": sweep.sweep_spec(SMALL, ["wanda"], ["unstructured"], [0.5]),
            "sensitivity": sensitivity.sensitivity_spec(SMALL, "wanda", [0.5], ["auto"], 8),
            "budget": budget.budget_spec(SMALL, "wanda", "uniform", 0.1),
            "continual": continual.continual_spec(SMALL, ["news", "wiki"], "wanda", 0.5, ["sequential"])}


def test_specs_carry_the_ui_executor_and_keep_their_keys(monkeypatch):
    monkeypatch.delenv(EXECUTOR_ENV, raising=False)
    monkeypatch.delenv("PRUNESCOPE_EXECUTOR", raising=False)
    local = _specs()
    assert all("executor" not in spec for spec in local.values())
    monkeypatch.setenv(EXECUTOR_ENV, json.dumps(RAY))
    on_ray = _specs()
    for kind, spec in on_ray.items():
        assert spec["executor"]["kind"] == "ray" and spec["executor"]["workers"] == 2, kind
        assert job_key(kind, spec) == job_key(kind, local[kind]), kind


def test_prunescope_ui_passes_its_executor_to_the_dashboard():
    env = ui_environment("embedded", base={}, executor=RAY)
    assert json.loads(env[EXECUTOR_ENV]) == RAY
    assert EXECUTOR_ENV not in ui_environment("embedded", base={})

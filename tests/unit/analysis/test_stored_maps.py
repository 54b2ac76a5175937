"""The stored sensitivity map a page shows, the one an allocator reads, and a map's top cells."""

from __future__ import annotations

import pytest

from pruning_core.analysis.stored_maps import map_agreement, map_to_show, sensitivity_for_allocation, top_cells
from pruning_core.store import Store
from pruning_core.stored_results import finished_results


def a_map(metric, sparsity, values=((0.1, 0.3), (0.2, float("nan")))):
    return {"metric": metric, "sparsity": sparsity, "method": "wanda", "layers": [0, 1], "modules": ["q", "down"],
            "values": [list(row) for row in values], "module_sizes": [[[4, 8], [8, 4]], [[4, 8], [8, 4]]]}


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store.sqlite")


def add_job(store, n, maps, correlations=(), model="m", state="done", kind="sensitivity"):
    store.insert_job({"id": f"j{n}", "key": f"k{n}", "kind": kind, "state": state, "created": float(n),
                      "spec": {"model": model, "method": "wanda"},
                      "result": {"maps": list(maps), "correlations": list(correlations)}})


def test_finished_results_newest_first_of_one_kind_and_model(store):
    add_job(store, 1, [a_map("exact", 0.5)])
    add_job(store, 2, [a_map("exact", 0.5)], model="other")
    add_job(store, 3, [a_map("exact", 0.5)], state="running")
    add_job(store, 4, [a_map("exact", 0.5)])
    assert [r["id"] for r in finished_results(store, "sensitivity", "m")] == ["j4", "j1"]
    assert finished_results(store, "sweep", "m") == []


def test_a_trusted_map_near_the_target_is_shown(store):
    low = [{"proxy": "reconstruction", "sparsity": 0.5, "spearman": 0.1, "cells": 4, "scope": ""}]
    add_job(store, 1, [a_map("exact", 0.3)])
    add_job(store, 2, [a_map("reconstruction", 0.5)], low)  # newest and nearest, but not trusted
    chosen, correlations = map_to_show(store, "m", 0.5)
    assert chosen["metric"] == "exact" and correlations == []
    assert map_agreement(a_map("reconstruction", 0.5), low)["spearman"] == 0.1
    assert map_to_show(store, "nobody") is None


def test_the_allocator_reads_a_map_at_two_sparsities(store):
    add_job(store, 1, [a_map("exact", 0.4), a_map("exact", 0.6)])
    add_job(store, 2, [a_map("taylor", 0.5)])
    found = sensitivity_for_allocation(store, "m")
    assert found["id"] == "j1" and found["label"] == "exact loss increase map of wanda at 40%, 60%"


def test_top_cells_skip_missing_values_and_count_weights():
    cells = top_cells(a_map("exact", 0.5), 2)
    assert [(c["layer"], c["module"], c["value"], c["weights"]) for c in cells] == \
        [(0, "down", 0.3, 32), (1, "q", 0.2, 32)]

"""End to end on the embedded SmolLM2-135M model: a small exact + proxy map, the CLI command, the store."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pruning_core.protocol import Protocol
from pruning_core.analysis.sensitivity import compute_sensitivity

pytestmark = pytest.mark.embedded

PROTOCOL = Protocol(calib="news", nsamples=4, seqlen=128, eval_windows=2, batch_size=4)
LAYERS = [0, 15, 29]


def test_embedded_map_is_finite_and_proxies_correlate(embedded, tmp_path):
    from pruning_core.store import Store

    before = embedded.model.model.layers[15].mlp.down_proj.weight.detach().clone()
    store = Store(tmp_path / "s.sqlite")
    result = compute_sensitivity(embedded, PROTOCOL, "wanda", [0.5], probe_windows=2, store=store, layers=LAYERS)
    exact, fisher, recon, _taylor = result["maps"]
    assert exact["modules"] == ["q", "k", "v", "o", "gate", "up", "down"] and exact["layers"] == LAYERS
    for m in result["maps"]:
        assert all(math.isfinite(v) for row in m["values"] for v in row)
    assert all(0 < v < 1 for row in recon["values"] for v in row)
    assert [c["proxy"] for c in result["correlations"]] == ["fisher", "reconstruction", "taylor"]
    # The second-order estimate ranks the 21 cells like the exact metric (0.90 on the full 8 x 512 map).
    assert result["correlations"][0]["spearman"] > 0.7, result["correlations"]
    assert 1.0 < exact["baseline_loss"] < 6.0  # a trained model, not a random one
    # Pruning half of a whole layer must cost more than any single one of its modules did... on average.
    assert sum(exact["layer_values"]) > max(max(row) for row in exact["values"])
    assert torch.equal(before, embedded.model.model.layers[15].mlp.down_proj.weight)
    again = compute_sensitivity(embedded, PROTOCOL, "wanda", [0.5], probe_windows=2, store=store, layers=LAYERS)
    assert all(m["cached"] for m in again["maps"]) and again["maps"][0]["values"] == exact["values"]


def test_cli_sensitivity_on_the_embedded_model(embedded, tmp_path, monkeypatch, capsys):
    from pruning_core.models import loading as models
    from pruning_core.cli import main

    # The converted model stays in the usual home (no 30 s reconversion); the store and jobs go to tmp.
    model_home = models.default_home()
    monkeypatch.setattr(models, "default_home", lambda: model_home)
    monkeypatch.setenv("PRUNESCOPE_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    assert main(["sensitivity", "--model", "embedded", "--calib", "news", "--method", "wanda", "--sparsity", "0.5",
                 "--metric", "exact", "--nsamples", "4", "--seqlen", "64", "--probe-windows", "1",
                 "--layers", "28,29", "--out", str(out)]) == 0
    doc = json.loads((out / "sensitivity.json").read_text())
    assert doc["metric"] == "exact" and len(doc["values"]) == 2 and len(doc["values"][0]) == 7
    assert "most sensitive" in capsys.readouterr().out

"""Short jobs: the work the dashboard would otherwise run in its own process (a plan, a throughput measurement,
generation for a new prompt) runs through the job system, with progress, and its result equals the direct call."""

from __future__ import annotations

import pytest

from pruning_core.allocation.plan_job import allocation_plan, run_plan_job
from pruning_core.analysis.estimates import estimate_job, measure_throughput, run_throughput_job
from pruning_core.analysis.whatif import run_generation_job
from pruning_core.errors import ConfigError
from pruning_core.models import load_model
from pruning_core.protocol import Protocol
from pruning_core.store import Store

PROTOCOL = Protocol(calib="news", nsamples=4, seqlen=32, seed=0, eval_windows=4, dtype="float32")


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store.sqlite")


def test_plan_job_equals_the_direct_plan_and_reports_progress(store):
    seen = []
    spec = {"model": "tiny-llama", "protocol": PROTOCOL.to_dict(), "allocation": "owl", "target": 0.5,
            "sensitivity_job": None}
    result = run_plan_job(spec, store, lambda f, m: seen.append(f))
    direct = allocation_plan(load_model("tiny-llama"), PROTOCOL, "owl", 0.5, store)
    assert result["plan"] == direct["plan"] and result["global_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert len(result["layer_sparsity"]) == len(direct["layer_sparsity"]) and seen[-1] == 1.0
    assert seen == sorted(seen)  # progress only moves forward


def test_a_sensitivity_plan_without_its_map_is_refused_in_one_sentence(store):
    spec = {"model": "tiny-llama", "protocol": PROTOCOL.to_dict(), "allocation": "sensitivity", "target": 0.5,
            "sensitivity_job": "gone"}
    with pytest.raises(ConfigError, match="no longer stored"):
        run_plan_job(spec, store, lambda f, m: None)
    with pytest.raises(ConfigError, match="Sensitivity page"):
        allocation_plan(load_model("tiny-llama"), PROTOCOL, "sensitivity", 0.5, store)


def test_estimates_never_time_the_model_until_the_throughput_job_ran(store):
    loaded = load_model("tiny-llama")
    spec = {"model": "tiny-llama", "protocol": PROTOCOL.to_dict(), "method": "wanda", "structure": "unstructured",
            "sparsity": 0.5, "eval_corpora": ["news"]}
    assert measure_throughput(loaded, 32, "float32", store, measure=False) is None
    assert estimate_job("whatif", spec, loaded, store, measure=False) is None
    rate = run_throughput_job({"model": "tiny-llama", "seqlen": 32, "dtype": "float32"}, store,
                              lambda f, m: None)["tokens_per_s"]
    assert measure_throughput(loaded, 32, "float32", store, measure=False) == rate > 0
    assert estimate_job("whatif", spec, loaded, store, measure=False)["seconds"] > 0


def test_generation_job_applies_the_stored_mask(store):
    import torch

    loaded = load_model("tiny-llama")
    masks = {name: torch.zeros_like(module.weight, dtype=torch.bool)
             for name, module in loaded.adapter.prunable_modules(loaded.model).items()}
    artifact = store.save_tensors(masks, "mask")
    out = run_generation_job({"model": "tiny-llama", "prompt": "Once upon a time", "mask_artifact": artifact,
                              "weights_artifact": None, "max_new_tokens": 8}, store, lambda f, m: None)
    from pruning_core import claims

    assert out == claims.compare_generations(loaded, ["Once upon a time"], masks, None, 8)[0]
    assert all(module.weight.abs().sum() > 0  # the cached model was restored
               for module in loaded.adapter.prunable_modules(loaded.model).values())

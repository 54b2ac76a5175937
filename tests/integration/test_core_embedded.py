"""End-to-end checks on the embedded SmolLM2-135M model (a real model, small protocol)."""

from __future__ import annotations

import pytest
import torch

from pruning_core.metrics import perplexity
from pruning_core.protocol import Protocol, calibration_ids, evaluation_ids
from pruning_core.prune import PruneConfig, prune_model

pytestmark = pytest.mark.embedded

SMALL = Protocol(calib="wiki", nsamples=8, seqlen=128, eval_windows=4, batch_size=4)


def test_embedded_model_facts(embedded):
    info = embedded.describe()
    assert info["family"] == "llama" and info["layers"] == 30 and info["hidden_size"] == 576
    assert len(embedded.adapter.prunable_modules(embedded.model)) == 30 * 7
    assert "quantization_config" not in embedded.model.config.to_dict()


def test_wanda_hurts_less_than_magnitude_at_half_sparsity(embedded):
    calib = calibration_ids(embedded, SMALL)
    evals = evaluation_ids(embedded, "wiki", SMALL)
    dense = perplexity(embedded, evals).ppl
    before = {n: m.weight.clone() for n, m in embedded.adapter.prunable_modules(embedded.model).items()}
    ppl = {}
    for method in ("magnitude", "wanda"):
        result = prune_model(embedded, calib, PruneConfig(method, "unstructured", 0.5), batch_size=4)
        assert abs(result.sparsity - 0.5) < 1e-3  # ties in Q4_1 weights must not overshoot
        with result.applied(embedded):
            ppl[method] = perplexity(embedded, evals).ppl
    assert dense < ppl["wanda"] < ppl["magnitude"]
    for name, module in embedded.adapter.prunable_modules(embedded.model).items():
        assert torch.equal(module.weight, before[name])


def test_bf16_evaluation_agrees_with_fp32(embedded):
    evals = evaluation_ids(embedded, "news", SMALL)
    fp32 = perplexity(embedded, evals, dtype="float32").ppl
    bf16 = perplexity(embedded, evals, dtype="bfloat16").ppl
    assert abs(bf16 - fp32) / fp32 < 0.005

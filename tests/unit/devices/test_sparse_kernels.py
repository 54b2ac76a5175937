"""2:4 sparse-kernel timing: the layout check and the refusal sentences run everywhere; the timing itself runs
where torch sees a GPU with sparse tensor cores (skipped otherwise)."""

from __future__ import annotations

import pytest
import torch

from pruning_core.devices.sparse_kernels import (KernelSpeedConfig, is_two_four, measure_two_four_speed,
                                                   two_four_support)
from pruning_core.errors import ConfigError
from pruning_core.masks import keep_mask_from_scores, parse_structure
from pruning_core.models.tiny import tiny_model
from pruning_core.prune import PruneConfig, prune_model

HAS_SPARSE_CORES = torch.cuda.is_available() and torch.cuda.get_device_capability(0) >= (8, 0)


def test_two_four_layout_check():
    keep = keep_mask_from_scores(torch.randn(8, 16), 0.5, parse_structure("2:4"))
    assert is_two_four(keep)
    assert is_two_four(torch.zeros(8, 16, dtype=torch.bool))  # fewer kept than 2 per group is still 2:4
    three = keep.clone()
    three[0, :4] = torch.tensor([True, True, True, False])
    assert not is_two_four(three)
    assert not is_two_four(torch.ones(4, 6, dtype=torch.bool))  # inputs not a multiple of 4


def test_the_cpu_gets_one_sentence_and_no_timing():
    reason = two_four_support(torch.device("cpu"))
    assert reason.startswith("2:4 sparse kernels need an NVIDIA GPU") and reason.endswith(").")
    tiny = tiny_model("llama", layers=2)
    result = measure_two_four_speed(tiny, {}, torch.device("cpu"))
    assert result == {"supported": False, "reason": reason}


def test_kernel_dtypes_are_checked():
    with pytest.raises(ConfigError, match="float16 or bfloat16"):
        KernelSpeedConfig(dtype="float32").validate()


def test_export_on_the_cpu_keeps_the_unmeasured_2_4_sentence(tmp_path):
    """Without a GPU the export says the 2:4 claim is not measured here, and why, in the report."""
    from pruning_core.devices.placement import LayerOffload
    from pruning_core.export.pipeline import ExportOptions, run_export
    from pruning_core.protocol import Protocol

    tiny = tiny_model("llama", layers=2)
    protocol = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=2, batch_size=4)
    options = ExportOptions(method="wanda", structure="2:4", sparsity=0.5, eval_corpora=("news",), prompts=(),
                            heatmap=False, curve_sparsities=())
    cpu = torch.device("cpu")
    report = run_export(tiny, protocol, options, tmp_path / "export", offload=LayerOffload(cpu, cpu))["report"]
    assert report["kernel_speed"]["supported"] is False
    assert "not measured here" in report["speed_note"]
    assert report["kernel_speed"]["reason"] in report["speed_note"]


@pytest.mark.skipif(not HAS_SPARSE_CORES, reason="needs a GPU with sparse tensor cores (compute capability 8.0+)")
def test_two_four_model_runs_on_the_sparse_cores_and_computes_the_same_model():
    loaded = tiny_model("llama", layers=2)
    ids = torch.randint(0, 300, (8, 32), generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    pruned = prune_model(loaded, ids, PruneConfig("wanda", "2:4", 0.5), batch_size=4)
    found = measure_two_four_speed(loaded, pruned.masks, torch.device("cuda:0"),
                                   config=KernelSpeedConfig(tokens=256, repeats=3, warmup=1))
    assert found["supported"] and found["converted"] > 0
    assert found["dense_tokens_per_s"] > 0 and found["pruned_tokens_per_s"] > 0
    assert found["max_logit_gap"] < 0.5  # fp16 on both sides: the same model, not a different one
    assert all(torch.equal(v, before[k]) for k, v in loaded.model.state_dict().items())  # the model is untouched

"""Export of a structured setting on the tiny model: the smaller folder loads with plain transformers and gives the
exported perplexity, and the report states the removed parameters, the file size, the measured speed (or that
it was not measured) and the widths; the unstructured report keeps its honest "no speed-up"."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from pruning_core import claims
from pruning_core.cli import main
from pruning_core.errors import ConfigError
from pruning_core.models import LoadedModel, load_model
from pruning_core.outputs.report import summary_sentences
from pruning_core.structured.export import export_structured
from pruning_core.protocol import Protocol
from pruning_core.structured.run import StructuredSpec

PROTOCOL = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=2, batch_size=4)
SPEED = {"prefill_tokens": 16, "decode_tokens": 3, "decode_batches": [1], "repeats": 1, "dtypes": ["float32"]}


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


def test_export_writes_a_smaller_folder_and_a_report_with_measured_savings(tiny, tmp_path):
    spec = StructuredSpec(model="tiny-llama", protocol=PROTOCOL, ratios=(0.25,), speed=True, speed_settings=SPEED,
                          max_new_tokens=3)
    out = export_structured(tiny, spec, tmp_path / "export")
    point = out["point"]
    model = AutoModelForCausalLM.from_pretrained(out["folder"]).eval()  # plain transformers, no custom code
    assert sum(p.numel() for p in model.parameters()) == point["parameters"]["model_after"]
    assert model.config.intermediate_size < tiny.model.config.intermediate_size
    ids = torch.randint(3, 200, (1, 12), generator=torch.Generator().manual_seed(0))
    assert model(input_ids=ids).logits.shape[-1] == tiny.model.config.vocab_size
    reloaded = LoadedModel(model, tiny.tokenizer, out["folder"], "reloaded", tiny.adapter)
    from pruning_core.evaluate import IN_PLACE, evaluate_setting

    again = evaluate_setting(reloaded, PROTOCOL, ["news"], IN_PLACE, dense=False)
    assert again.pruned_ppl["news"] == pytest.approx(point["ppl"]["news"], rel=1e-4)

    document = json.loads((tmp_path / "export" / "report.json").read_text())
    summary = " ".join(document["summary"])
    assert f"{point['measured_ratio'] * 100:.1f} % of its decoder-layer parameters were removed" in summary
    assert f"{point['parameters']['model_after']:,} parameters" in summary
    assert claims.format_bytes(point["saved"]["file_bytes"]) in summary
    assert "Measured on" in summary and "decode at batch 1" in summary
    # The measured savings beside unstructured's honest "no speed-up", in the claims module's words.
    assert claims.speed_sentence("unstructured") in document["summary"][-1]
    markdown = (tmp_path / "export" / "report.md").read_text()
    assert "### Measured speed" in markdown and "## Widths per layer" in markdown
    assert claims.speed_sentence("unstructured") in markdown
    assert "Where the zeros are" not in markdown and "measured: decoder parameters removed" in markdown
    html = (tmp_path / "export" / "report.html").read_text()
    assert "Measured speed" in html and "model/model.safetensors" in html
    assert "Widths per layer" in html  # the chart's headline, its ratio on the second line:
    assert f"{100 * point['measured_ratio']:.1f} % of decoder parameters removed" in html

    with pytest.raises(ConfigError, match="already exists"):
        export_structured(tiny, spec, tmp_path / "export")
    with pytest.raises(ConfigError, match="one structured ratio"):
        export_structured(tiny, StructuredSpec(model="tiny-llama", protocol=PROTOCOL, ratios=(0.1, 0.2)),
                          tmp_path / "two")


def test_unmeasured_structured_report_says_so_and_unstructured_keeps_no_speed_up(tiny, tmp_path):
    assert main(["structured", "--model", "tiny-llama", "--calib", "news", "--eval", "news", "--nsamples", "4",
                 "--seqlen", "32", "--eval-windows", "2", "--batch-size", "4", "--no-store", "--ratios", "0.2",
                 "--score", "magnitude", "--no-compensate", "--report", "--out", str(tmp_path / "cli")]) == 0
    document = json.loads((tmp_path / "cli" / "report-0.2" / "report.json").read_text())
    assert "not measured here" in " ".join(document["summary"])
    unstructured = summary_sentences({"setting": {"model": "m", "method": "wanda", "structure": "unstructured",
                                                  "sparsity": 0.5},
                                      "speed_note": claims.speed_sentence("unstructured")})
    assert unstructured[-1].startswith("No speed-up to expect")

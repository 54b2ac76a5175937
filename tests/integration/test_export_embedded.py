"""End to end on the embedded SmolLM2-135M: `prunescope export` writes every file, the mask re-applies to a
fresh load with the same perplexity, and the saved pruned model reloads with the same perplexity."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.embedded


def test_export_embedded_end_to_end(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from pruning_core.cli import main
    from pruning_core.metrics import perplexity
    from pruning_core.models import LoadedModel, load_model
    from pruning_core.protocol import Protocol, evaluation_ids

    out = tmp_path / "export"
    assert main(["export", "--model", "embedded", "--calib", "wiki", "--method", "wanda", "--structure",
                 "unstructured", "--sparsity", "0.5", "--nsamples", "8", "--seqlen", "128", "--eval-windows", "4",
                 "--max-new-tokens", "8", "--recipe", "--save-model", "--no-heatmap", "--out", str(out)]) == 0
    for name in ("masks.safetensors", "manifest.json", "report.html", "report.md", "report.json", "recipe.yaml",
                 "pruned-model/model.safetensors"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert report["setting"]["model"] == "SmolLM2-135M-Instruct"
    assert manifest["measured_sparsity"]["overall"] == pytest.approx(0.5, abs=1e-3)
    assert len(manifest["measured_sparsity"]["per_module"]) == 30 * 7
    pruned_ppl = report["ppl"]["pruned"]["wiki"]
    assert pruned_ppl > report["ppl"]["dense"]["wiki"]

    capsys.readouterr()
    assert main(["apply-mask", "--model", "embedded", "--mask", str(out), "--eval", "wiki"]) == 0
    assert f"wiki: perplexity {pruned_ppl:.3f}" in capsys.readouterr().out

    loaded = load_model("embedded")
    model = AutoModelForCausalLM.from_pretrained(out / "pruned-model").eval()
    reloaded = LoadedModel(model, loaded.tokenizer, "saved", "saved", loaded.adapter)
    ids = evaluation_ids(loaded, "wiki", Protocol(seqlen=128, eval_windows=4))
    assert perplexity(reloaded, ids).ppl == pytest.approx(pruned_ppl, rel=1e-5)

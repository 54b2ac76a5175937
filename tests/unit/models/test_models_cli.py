"""Models, adapters, perplexity, the sweep and the CLI on tiny random models; bad input gets clear errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pruning_core import cli
from pruning_core.errors import ModelLoadError
from pruning_core.metrics import backward_transfer, perplexity
from pruning_core.models import ADAPTERS, adapter_for, classify_source, load_model, weight_matrix
from pruning_core.protocol import Protocol
from pruning_core.store import Store
from pruning_core.analysis.sweep import SweepSpec, run_sweep
from pruning_core.models.tiny import tiny_model

TINY_PROTOCOL = dict(calib="news", nsamples=4, seqlen=32, eval_windows=3, batch_size=4)


@pytest.mark.parametrize("family,kinds", [
    ("llama", 7), ("mistral", 7), ("qwen2", 7), ("opt", 6), ("gpt2", 4)])
def test_adapters_find_every_prunable_linear(family, kinds):
    lm = tiny_model(family, layers=2)
    modules = lm.adapter.prunable_modules(lm.model)
    assert len(modules) == 2 * kinds
    for name, module in modules.items():
        out_in = weight_matrix(module).shape
        if family == "gpt2":  # Conv1D stores (in, out); the adapter must hand methods (out, in)
            assert out_in == (module.nf, module.weight.shape[0])
        else:
            assert out_in == (module.out_features, module.in_features)


def test_encoder_model_is_refused_by_the_adapter_check_even_as_a_decoder():
    from transformers import BertConfig, BertLMHeadModel

    model = BertLMHeadModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, is_decoder=True))
    with pytest.raises(ModelLoadError, match="'bert' is an encoder-only .* decoder-only causal language models"):
        adapter_for(model)


def test_model_without_decoder_layers_is_refused():
    class Toy(torch.nn.Module):
        config = type("Config", (), {"model_type": "toy", "is_encoder_decoder": False})()

        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(4, 4)

    with pytest.raises(ModelLoadError, match="No decoder layers .* 'toy' model"):
        adapter_for(Toy())


def test_explicit_adapters_stay_overrides():
    lm = tiny_model("llama")
    assert lm.adapter is ADAPTERS["llama"] and not lm.adapter.discovered
    assert lm.adapter.module_kinds == ["q", "k", "v", "o", "gate", "up", "down"]


def test_perplexity_matches_the_hf_loss():
    lm = tiny_model("llama")
    ids = torch.randint(0, 300, (3, 24), generator=torch.Generator().manual_seed(0))
    ours = perplexity(lm, ids, batch_size=2)
    with torch.no_grad():
        losses = [lm.model(input_ids=ids[i:i + 1], labels=ids[i:i + 1]).loss for i in range(3)]
    assert math.isclose(ours.ppl, math.exp(float(torch.stack(losses).mean())), rel_tol=1e-5)
    assert ours.tokens == 3 * 23


def test_backward_transfer_sign_convention():
    R = [[10.0, 0, 0], [11.0, 20.0, 0], [12.0, 22.0, 30.0]]  # ppl on domain i after step t
    assert backward_transfer(R) == pytest.approx(((12 - 10) + (22 - 20)) / 2)  # positive = forgetting


@pytest.mark.parametrize("source,kind", [("embedded", "embedded"), ("tiny-llama", "tiny"),
                                         ("HuggingFaceTB/SmolLM2-135M", "hub"), ("gpt2", "hub")])
def test_classify_source(source, kind):
    assert classify_source(source) == kind


def test_sweep_stores_points_and_resumes_without_recomputing():
    store = Store()
    spec = SweepSpec(model="tiny-llama", methods=("magnitude", "wanda"), structures=("unstructured", "2:4"),
                     sparsities=(0.3, 0.6), eval_corpora=("news",), protocol=Protocol(**TINY_PROTOCOL))
    first = run_sweep(spec, store=store)
    assert len(first["points"]) == 2 * (2 + 1)
    assert not any(p["cached"] for p in first["points"])
    second = run_sweep(spec, store=store)
    assert all(p["cached"] for p in second["points"])
    assert [p["ppl"] for p in first["points"]] == [p["ppl"] for p in second["points"]]


def run_cli(*argv):
    return cli.main([str(a) for a in argv])


SWEEP_ARGS = ["sweep", "--model", "tiny-llama", "--calib", "news", "--eval", "news,pydocs", "--methods",
              "magnitude,wanda,sparsegpt", "--structures", "unstructured,2:4", "--sparsities", "0.5,0.7",
              "--nsamples", "4", "--seqlen", "32", "--eval-windows", "2", "--seed", "0"]


def test_cli_sweep_writes_results_json(tmp_path, capsys):
    assert run_cli(*SWEEP_ARGS, "--out", tmp_path / "out") == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["dense"]["ppl"]) == {"news", "pydocs"}
    points = results["points"]
    assert len(points) == 3 * (2 + 1)  # 2:4 once per method
    for point in points:
        for key in ("method", "structure", "target_sparsity", "sparsity", "prune_seconds", "eval_seconds"):
            assert key in point
        assert set(point["ppl"]) == {"news", "pydocs"}
        assert abs(point["sparsity"] - point["target_sparsity"]) < 0.01
    assert {p["structure"] for p in points} == {"unstructured", "2:4"}
    for key in ("nsamples", "seqlen", "seed", "eval_windows", "dtype", "propagation"):
        assert key in results["protocol"]
    assert results["env"]["torch"] == torch.__version__.split("+")[0] or results["env"]["torch"]


@pytest.mark.parametrize("change,message", [
    (("--methods", "magnitude,obs"), "Unknown method 'obs'"),
    (("--structures", "2-4"), "Structure '2-4'"),
    (("--sparsities", "1.0"), r"outside \[0, 1\)"),
    (("--sparsities", "half"), "comma-separated numbers"),
    (("--model", "/no/such/model"), "does not exist"),
    (("--calib", "/no/such/file.txt"), "file.txt"),
    (("--nsamples", "100000"), "token"),
])
def test_cli_bad_input_is_one_clear_sentence_and_keeps_out(tmp_path, capsys, change, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("previous")
    args = list(SWEEP_ARGS)
    flag, value = change
    args[args.index(flag) + 1] = value
    assert run_cli(*args, "--out", out) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    # Progress lines ("[  0.0% ...] loading model") may come first; the error itself is one line.
    errors = [line for line in err.splitlines() if not line.startswith("[")]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "Traceback" not in err, err
    assert __import__("re").search(message, errors[0]), err
    assert (out / "results.json").read_text() == "previous"


def test_cli_refuses_a_corrupt_gguf(tmp_path, capsys):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf at all")
    assert run_cli("sweep", "--model", bad, "--out", tmp_path / "o") == cli.EXIT_BAD_INPUT
    assert "not a valid GGUF" in capsys.readouterr().err


def test_cli_refuses_a_non_llm_gguf(tmp_path, capsys):
    import gguf
    import numpy as np

    path = tmp_path / "embedding.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert run_cli("sweep", "--model", path, "--out", tmp_path / "o") == cli.EXIT_BAD_INPUT
    assert "Could not read" in capsys.readouterr().err


def test_hub_id_while_offline_fails_fast_with_a_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="offline.*embedded"):
        load_model("someone/some-model-that-is-not-cached")

"""Any decoder-only causal LM: tiny random GPT-NeoX (Pythia), Phi-3, Gemma, Falcon, StableLM and OLMo models are
found by generic discovery and prune, sweep and export; encoder-only and encoder-decoder models are refused."""

from __future__ import annotations

import math

import pytest
import torch

from pruning_core.analysis.sweep import SweepSpec, run_sweep
from pruning_core.errors import ModelLoadError
from pruning_core.masks import applied_masks
from pruning_core.models import ADAPTERS, discover_adapter, load_model, weight_matrix
from pruning_core.models.tiny import tiny_model
from pruning_core.mask_files import load_masks
from pruning_core.export.pipeline import ExportOptions, run_export
from pruning_core.protocol import Protocol, calibration_ids
from pruning_core.prune import PruneConfig, prune_model
from pruning_core.walk import capture_layer_inputs, walk_layers

FAMILIES = ("gpt_neox", "phi3", "gemma", "falcon", "stablelm", "olmo")
PROTOCOL = Protocol(calib="news", nsamples=4, seqlen=32, eval_windows=2, batch_size=4)
# Kinds a discovery must produce: fused projections stay their own kinds.
EXPECTED_KINDS = {
    "gpt_neox": ["qkv", "dense", "h_to_4h", "4h_to_h"],
    "phi3": ["qkv", "o", "gate_up", "down"],
    "gemma": ["q", "k", "v", "o", "gate", "up", "down"],
    "falcon": ["qkv", "dense", "h_to_4h", "4h_to_h"],
    "stablelm": ["q", "k", "v", "o", "gate", "up", "down"],
    "olmo": ["q", "k", "v", "o", "gate", "up", "down"],
}


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    return request.param, load_model(f"tiny-{request.param}")


def test_discovery_finds_layers_and_every_linear_in_forward_order(family_model):
    family, lm = family_model
    assert family not in ADAPTERS and lm.adapter.discovered and lm.adapter.family == family
    assert lm.adapter.module_kinds == EXPECTED_KINDS[family]
    layers = lm.adapter.decoder_layers(lm.model)
    assert len(layers) == lm.model.config.num_hidden_layers
    modules = lm.adapter.prunable_modules(lm.model)
    assert len(modules) == len(layers) * len(EXPECTED_KINDS[family])
    # Embeddings and the LM head are never among the prunable modules.
    head = lm.model.get_output_embeddings()
    assert all(module is not head for module in modules.values())
    assert all("embed" not in name and "lm_head" not in name for name in modules)
    for module in modules.values():
        assert weight_matrix(module).shape == (module.out_features, module.in_features)


def test_layer_walk_reproduces_the_models_logits(family_model):
    """Captured layer-0 kwargs (rotary/alibi, masks), the walk and the final norm give the model's own logits."""
    _, lm = family_model
    ids = torch.randint(3, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    final = walk_layers(lm, capture_layer_inputs(lm, ids, batch_size=2), lambda i, layer, stats: False)
    with torch.no_grad():
        logits = lm.model.get_output_embeddings()(lm.adapter.final_norm(lm.model)(torch.cat(final.hidden)))
        reference = lm.model(input_ids=ids).logits
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family,renamed", [("llama", {}), ("opt", {"out": "o"}),
                                            ("gpt2", {"c_attn": "qkv", "attn_c_proj": "o", "c_fc": "fc",
                                                      "mlp_c_proj": "proj"})])
def test_discovery_agrees_with_the_explicit_overrides(family, renamed):
    """Without its override a family is found the same way: same layers, same linears, a final norm that works."""
    lm = tiny_model(family)
    found = discover_adapter(lm.model)
    explicit = ADAPTERS[family]
    assert found.layers_path == explicit.layers_path
    assert {renamed.get(kind, kind): path for kind, path in found.linears.items()} == explicit.linears
    hidden = torch.randn(2, 5, lm.model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(found.final_norm(lm.model)(hidden), explicit.final_norm(lm.model)(hidden))


def test_falcon_with_alibi_walks_too():
    lm = tiny_model("falcon", alibi=True)
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    result = prune_model(lm, ids, PruneConfig("sparsegpt", "unstructured", 0.5), batch_size=1)
    assert result.sparsity == pytest.approx(0.5, abs=0.01)
    final = walk_layers(lm, capture_layer_inputs(lm, ids, batch_size=1), lambda i, layer, stats: False)
    with torch.no_grad():
        logits = lm.model.get_output_embeddings()(lm.adapter.final_norm(lm.model)(torch.cat(final.hidden)))
        torch.testing.assert_close(logits, lm.model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_family_sweeps_three_methods(family_model):
    family, lm = family_model
    spec = SweepSpec(model=f"tiny-{family}", methods=("magnitude", "wanda", "sparsegpt"), sparsities=(0.5,),
                     eval_corpora=("news",), protocol=PROTOCOL)
    results = run_sweep(spec, loaded=lm)
    assert [p["method"] for p in results["points"]] == ["magnitude", "wanda", "sparsegpt"]
    assert math.isfinite(results["dense"]["ppl"]["news"])
    for point in results["points"]:
        assert point["sparsity"] == pytest.approx(0.5, abs=0.01), point["method"]
        assert math.isfinite(point["ppl"]["news"]), point["method"]
    assert results["model"]["module_kinds"] == EXPECTED_KINDS[family]


def test_family_exports_and_the_mask_reapplies_with_identical_logits(family_model, tmp_path):
    family, lm = family_model
    options = ExportOptions(method="wanda", sparsity=0.5, eval_corpora=("news",), prompts=("The city",),
                            max_new_tokens=4, formats=("json",))
    out = run_export(lm, PROTOCOL, options, tmp_path / "export")
    assert out["manifest"]["measured_sparsity"]["overall"] == pytest.approx(0.5, abs=0.01)
    assert out["report"]["per_layer"]
    assert out["report"]["sensitivity"]["modules"] == EXPECTED_KINDS[family]  # fused kinds are heatmap columns
    masks, manifest = load_masks(tmp_path / "export")
    assert set(masks) == set(lm.adapter.prunable_modules(lm.model))
    expected = prune_model(lm, calibration_ids(lm, PROTOCOL), PruneConfig("wanda", "unstructured", 0.5),
                           PROTOCOL.batch_size)
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        with expected.applied(lm):
            pruned_logits = lm.model(input_ids=ids).logits
        fresh = load_model(f"tiny-{family}")
        assert fresh.fingerprint == manifest["model"]["fingerprint"]
        with applied_masks(fresh.model, masks, None):
            reapplied_logits = fresh.model(input_ids=ids).logits
    assert torch.equal(pruned_logits, reapplied_logits)


def test_family_heatmap_has_its_own_kinds_and_finite_exact_values(family_model):
    from pruning_core.analysis.sensitivity import compute_sensitivity

    family, lm = family_model
    out = compute_sensitivity(lm, PROTOCOL, "wanda", [0.5], metrics=("exact",), probe_windows=2)
    (heatmap,) = out["maps"]
    assert heatmap["modules"] == EXPECTED_KINDS[family]
    assert len(heatmap["values"]) == lm.model.config.num_hidden_layers
    assert all(math.isfinite(v) for row in heatmap["values"] for v in row)


def _save(model, folder):
    model.save_pretrained(folder)
    return str(folder)


def test_t5_and_bert_folders_are_refused_with_one_sentence(tmp_path):
    from transformers import BertConfig, BertForMaskedLM, T5Config, T5ForConditionalGeneration

    t5 = _save(T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                                   num_heads=2)), tmp_path / "t5")
    bert = _save(BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=32)), tmp_path / "bert")
    for folder, what in ((t5, "'t5' is an encoder-decoder model"), (bert, "'bert' is an encoder-only")):
        with pytest.raises(ModelLoadError) as info:
            load_model(folder)
        message = str(info.value)
        assert message.startswith(what) and "decoder-only causal language models" in message
        assert message.count(". ") == 0 and message.endswith(".")  # one sentence


def test_hub_id_of_an_encoder_decoder_is_refused_before_weights_load(monkeypatch):
    """The hub path reads the config first: a T5 id is refused without downloading (or needing) its weights."""
    import transformers
    from transformers import T5Config

    def config_only(source, **kwargs):
        return T5Config()

    def no_weights(*args, **kwargs):
        raise AssertionError("weights must not be loaded for a refused model")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", config_only)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_weights)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    with pytest.raises(ModelLoadError, match="^'t5' is an encoder-decoder model"):
        load_model("google-t5/t5-small")

"""Models of published shapes with random weights: built offline, deterministic, in the asked dtype."""

from __future__ import annotations

import pytest
import torch

from pruning_core.errors import ModelLoadError
from pruning_core.models import classify_source, weight_fingerprint
from pruning_core.models.random_shapes import SHAPES, random_config, random_model
from pruning_core.models.tiny import build_test_tokenizer

EMBEDDED_VOCAB = 49152  # the embedded tokenizer's entries, what load_model("random:...") pairs them with


class _Tokenizer:
    """Stands for the embedded tokenizer where only its length and special ids matter (the config)."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 2

    def __len__(self):
        return EMBEDDED_VOCAB


def meta_parameters(shape):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(random_config(shape, _Tokenizer()))
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("shape,parameters", [
    ("smollm2-135m", 134_515_008),    # SmolLM2-135M as published
    ("smollm2-360m", 361_821_120),    # SmolLM2-360M as published
    ("tinyllama-1.1b", 1_170_302_976),  # 1,100,048,384 published + 2 x 17,152 x 2048 rows for the wider vocabulary
    ("llama-3.2-3b", 3_212_749_824),  # Llama-3.2-3B as published (its 128,256 rows kept)
])
def test_shapes_have_the_published_parameter_counts(shape, parameters):
    assert meta_parameters(shape) == parameters


def test_vocabulary_is_never_narrower_than_the_tokenizer():
    assert random_config("tinyllama-1.1b", _Tokenizer()).vocab_size == EMBEDDED_VOCAB  # 32,000 widened
    assert random_config("llama-3.2-3b", _Tokenizer()).vocab_size == 128256  # kept


def test_random_model_is_deterministic_in_bf16_with_tied_weights_and_working_rope():
    tokenizer = build_test_tokenizer()
    a = random_model("smollm2-360m", tokenizer, dtype=torch.bfloat16, num_hidden_layers=2)
    b = random_model("smollm2-360m", tokenizer, dtype=torch.bfloat16, num_hidden_layers=2)
    c = random_model("smollm2-360m", tokenizer, dtype=torch.bfloat16, seed=1, num_hidden_layers=2)
    assert all(p.dtype == torch.bfloat16 for p in a.model.parameters())
    assert weight_fingerprint(a.model, a.adapter) == weight_fingerprint(b.model, b.adapter)
    assert weight_fingerprint(a.model, a.adapter) != weight_fingerprint(c.model, c.adapter)
    assert a.model.get_output_embeddings().weight.data_ptr() == a.model.get_input_embeddings().weight.data_ptr()
    q = a.adapter.layer_linears(a.adapter.decoder_layers(a.model)[0])["q"].weight.detach().float()
    assert abs(float(q.std()) - 0.02) < 0.002 and abs(float(q.mean())) < 0.001
    # The rotary buffers are those of a normally built model, not to_empty's garbage.
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_config(random_config("smollm2-360m", tokenizer, num_hidden_layers=1))
    assert torch.equal(a.model.model.rotary_emb.inv_freq, reference.model.rotary_emb.inv_freq)
    ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    with torch.inference_mode():
        logits = a.model(ids).logits
    assert logits.shape == (1, ids.shape[1], EMBEDDED_VOCAB) and torch.isfinite(logits).all()


def test_llama3_rope_scaling_is_kept():
    tokenizer = build_test_tokenizer()
    lm = random_model("llama-3.2-3b", tokenizer, dtype=torch.bfloat16, num_hidden_layers=1, hidden_size=256,
                      intermediate_size=512, num_attention_heads=2, num_key_value_heads=1, vocab_size=300)
    assert lm.model.config.rope_parameters["rope_type"] == "llama3"
    assert torch.isfinite(lm.model.model.rotary_emb.inv_freq).all()


def test_sources_and_unknown_shapes():
    assert classify_source("random:tinyllama-1.1b") == "random"
    with pytest.raises(ModelLoadError, match="random:smollm2-360m"):
        random_config("gpt-5", _Tokenizer())
    assert set(SHAPES) >= {"smollm2-360m", "tinyllama-1.1b", "llama-3.2-3b"}

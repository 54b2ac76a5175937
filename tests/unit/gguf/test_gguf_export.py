"""GGUF export on tiny random llama models: the file parses with the gguf reader with the expected metadata,
tensor types and shapes; transformers' own GGUF loader (an independent reader that undoes llama.cpp's rope order)
gives back the same logits; per-layer widths go out as llama.cpp's deci block; bad inputs get one sentence."""

from __future__ import annotations

import re

import gguf
import pytest
import torch

from pruning_core.errors import ConfigError
from pruning_core.gguf.read import gguf_weights_applied
from pruning_core.gguf.write import export_gguf, gguf_file_name
from pruning_core.models.tiny import tiny_model
from pruning_core.plan import SparsityPlan
from pruning_core.sizes.files import saved_size
from pruning_core.structured import StructuredConfig, prune_structured


def one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and re.search(r"[.;]\s+[A-Z]", message) is None


def windows(n=4, seqlen=20, seed=0):
    return torch.randint(3, 300, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def fields(path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return {key: field.contents() for key, field in reader.fields.items()}, {t.name: t for t in reader.tensors}


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", layers=2)


@pytest.mark.parametrize("kind", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_tiny_file_parses_with_expected_metadata_types_and_shapes(llama, kind, tmp_path):
    path = tmp_path / gguf_file_name(llama.name, kind)
    result = export_gguf(llama, path, kind)
    meta, tensors = fields(path)
    config = llama.model.config
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == config.num_hidden_layers
    assert meta["llama.embedding_length"] == config.hidden_size
    assert meta["llama.context_length"] == config.max_position_embeddings
    assert meta["llama.feed_forward_length"] == config.intermediate_size
    assert meta["llama.attention.head_count"] == config.num_attention_heads
    assert meta["llama.attention.head_count_kv"] == config.num_key_value_heads
    assert meta["llama.attention.key_length"] == config.head_dim
    assert meta["general.file_type"] == {"F16": 1, "BF16": 32, "Q8_0": 7, "Q4_0": 2, "Q4_1": 3}[kind]
    # The tokenizer: every token of the HF tokenizer in id order, byte-level BPE merges, its special ids.
    vocab = llama.tokenizer.get_vocab()
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.get)
    assert len(meta["tokenizer.ggml.merges"]) > 0
    assert meta["tokenizer.ggml.bos_token_id"] == llama.tokenizer.bos_token_id
    assert meta["tokenizer.ggml.eos_token_id"] == llama.tokenizer.eos_token_id
    # Tied output: no output tensor; every parameter once, matrices in the type (embedding Q8_0 under 4 bits).
    assert "output.weight" not in tensors
    assert len(tensors) == len(list(llama.model.parameters()))
    embedding_kind = "Q8_0" if kind.startswith("Q4") else kind
    for name, tensor in tensors.items():
        expected = "F32" if len(tensor.shape) == 1 else embedding_kind if name == "token_embd.weight" else kind
        assert tensor.tensor_type.name == expected, name
    assert list(tensors["blk.0.attn_q.weight"].shape) == [config.hidden_size, config.num_attention_heads * 16]
    assert list(tensors["blk.1.attn_k.weight"].shape) == [config.hidden_size, config.num_key_value_heads * 16]
    assert list(tensors["blk.0.ffn_down.weight"].shape) == [config.intermediate_size, config.hidden_size]
    assert list(tensors["token_embd.weight"].shape) == [config.hidden_size, config.vocab_size]
    # The bytes reported are the file's bytes on disk, as the sizes package measures them.
    assert result["bytes"] == path.stat().st_size == saved_size(path)["weight_bytes"]
    assert result["tensor_types"][kind] == 14 + (embedding_kind == kind)  # 7 linears x 2 layers (+ embedding)


@pytest.mark.parametrize("kind", ["F32", "F16", "Q8_0", "Q4_1"])
def test_transformers_gguf_loader_reads_the_same_model_back(llama, kind, tmp_path):
    from transformers import AutoModelForCausalLM

    name = f"tiny-{kind}.gguf"
    export_gguf(llama, tmp_path / name, kind)
    ids = windows()
    reference = logits(llama.model, ids)
    with gguf_weights_applied(llama, tmp_path / name):
        ours = logits(llama.model, ids)
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=name).eval()
    # transformers undoes llama.cpp's rope row order and reads heads from the metadata on its own: a wrong order
    # or head count would change its logits, not just round them.
    torch.testing.assert_close(logits(theirs, ids), ours, rtol=1e-5, atol=1e-5)
    tolerance = {"F32": 0.0, "F16": 1e-3, "Q8_0": 2e-2, "Q4_1": 2e-1}[kind]
    assert float((ours - reference).abs().max()) <= tolerance
    torch.testing.assert_close(logits(llama.model, ids), reference, rtol=0, atol=0)  # restored after the block


def test_per_layer_widths_are_written_as_deci_with_one_value_per_layer(tmp_path):
    lm = tiny_model("llama", layers=3)
    ids = windows(8, 24)
    plan = SparsityPlan.from_layers(lm.adapter.module_kinds, [0.1, 0.4, 0.25], "test")
    pruned = prune_structured(lm, ids, StructuredConfig(units=("heads", "channels"), plan=plan)).loaded
    widths = [(w["heads"], w["kv_heads"], w["channels"]) for w in
              export_gguf(pruned, tmp_path / "s.gguf", "F16")["architecture"]["layers"]]
    assert len(set(widths)) > 1
    meta, tensors = fields(tmp_path / "s.gguf")
    assert meta["general.architecture"] == "deci"
    assert meta["deci.attention.head_count"] == [w[0] for w in widths]
    assert meta["deci.attention.head_count_kv"] == [w[1] for w in widths]
    assert meta["deci.feed_forward_length"] == [w[2] for w in widths]
    assert meta["deci.attention.key_length"] == 16
    for i, (heads, kv_heads, channels) in enumerate(widths):
        assert list(tensors[f"blk.{i}.attn_q.weight"].shape) == [64, heads * 16]
        assert list(tensors[f"blk.{i}.attn_k.weight"].shape) == [64, kv_heads * 16]
        assert list(tensors[f"blk.{i}.ffn_down.weight"].shape) == [channels, 64]
    before = logits(pruned.model, ids[:2])
    with gguf_weights_applied(pruned, tmp_path / "s.gguf"):
        assert float((logits(pruned.model, ids[:2]) - before).abs().max()) < 1e-3


def test_rows_a_block_does_not_divide_are_refused_in_one_sentence_or_fall_back_by_name(tmp_path):
    lm = tiny_model("llama", layers=2)
    plan = SparsityPlan.from_layers(lm.adapter.module_kinds, [0.1, 0.4], "test")
    pruned = prune_structured(lm, windows(8, 24), StructuredConfig(units=("channels",), plan=plan)).loaded
    path = tmp_path / "out" / "q.gguf"
    with pytest.raises(ConfigError) as refused:
        export_gguf(pruned, path, "Q8_0")
    message = str(refused.value)
    assert one_sentence(message) and "ffn_down" in message and "32" in message
    assert not path.parent.exists()  # refused before anything was written
    result = export_gguf(pruned, path, "Q8_0", fallback="F16")
    _, tensors = fields(path)
    fell_back = {f["tensor"] for f in result["fallbacks"]}
    assert fell_back and all(name.endswith("ffn_down.weight") for name in fell_back)
    for name, tensor in tensors.items():
        if len(tensor.shape) == 2:
            assert tensor.tensor_type.name == ("F16" if name in fell_back else "Q8_0"), name


def test_a_model_whose_width_no_block_divides_is_refused_for_block_types(tmp_path):
    lm = tiny_model("llama", layers=1, hidden=48)
    with pytest.raises(ConfigError) as refused:
        export_gguf(lm, tmp_path / "w.gguf", "Q4_0")
    assert one_sentence(str(refused.value)) and "48" in str(refused.value)
    assert export_gguf(lm, tmp_path / "w.gguf", "F16")["tensor_types"]["F16"] > 0


def test_layer_dropped_model_is_a_plain_llama_file_with_fewer_blocks(tmp_path):
    lm = tiny_model("llama", layers=4)
    pruned = prune_structured(lm, windows(8, 24), StructuredConfig(units=("layers",), ratio=0.5)).loaded
    kept = len(pruned.adapter.decoder_layers(pruned.model))
    assert kept < 4
    export_gguf(pruned, tmp_path / "l.gguf", "Q8_0")
    meta, tensors = fields(tmp_path / "l.gguf")
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == kept
    assert f"blk.{kept - 1}.attn_q.weight" in tensors and f"blk.{kept}.attn_q.weight" not in tensors


@pytest.mark.parametrize("family,words", [("opt", "not a model family llama.cpp runs"),
                                          ("gpt2", "llama.cpp runs 'gpt2' models")])
def test_families_outside_the_llama_block_are_refused_in_one_sentence(family, words, tmp_path):
    with pytest.raises(ConfigError) as refused:
        export_gguf(tiny_model(family, layers=1), tmp_path / "f.gguf", "F16")
    assert words in str(refused.value) and one_sentence(str(refused.value))
    assert not (tmp_path / "f.gguf").exists()


@pytest.mark.parametrize("kind,words", [("Q4_K", "can read Q4_K but not write it"),
                                        ("Q3_X", "is not one PruneScope writes")])
def test_types_the_gguf_package_cannot_write_are_refused_in_one_sentence(llama, kind, words, tmp_path):
    with pytest.raises(ConfigError) as refused:
        export_gguf(llama, tmp_path / "t.gguf", kind)
    assert words in str(refused.value) and one_sentence(str(refused.value))


def test_a_path_that_is_not_a_gguf_file_name_is_refused(llama, tmp_path):
    with pytest.raises(ConfigError, match="ends in .gguf"):
        export_gguf(llama, tmp_path / "model.bin", "F16")

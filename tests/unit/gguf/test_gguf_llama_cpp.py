"""The GGUF files run in llama.cpp itself (through llama-cpp-python, an optional extra): dense, per-layer widths
(deci) and layer-dropped tiny llama models give the torch model's greedy tokens and logits, llama.cpp tokenizes
text as the Hugging Face tokenizer does, and perplexity inside llama.cpp matches PruneScope's on the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pruning_core.gguf.read import gguf_weights_applied
from pruning_core.gguf.runtime import (
    greedy_tokens,
    llama_cpp_available,
    llama_cpp_perplexity,
    opened_gguf,
    require_llama_cpp,
)
from pruning_core.gguf.write import export_gguf
from pruning_core.metrics import perplexity
from pruning_core.models.tiny import tiny_model
from pruning_core.plan import SparsityPlan
from pruning_core.structured import StructuredConfig, prune_structured

pytestmark = pytest.mark.skipif(not llama_cpp_available(),
                                reason="llama-cpp-python is not installed (pip install '.[llama]' compiles llama.cpp).")

SEQLEN = 48


def windows(n=3, seqlen=SEQLEN, seed=0):
    return torch.randint(3, 300, (n, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def models():
    # Weights drawn wider than the default 0.02, so the logits are peaked and greedy decoding varies its tokens
    # (with the default, every position picks the same token and agreement would prove little).
    dense = tiny_model("llama", layers=3, initializer_range=0.2)
    plan = SparsityPlan.from_layers(dense.adapter.module_kinds, [0.1, 0.4, 0.25], "test")
    uneven = prune_structured(dense, windows(8, 24), StructuredConfig(units=("heads", "channels"), plan=plan)).loaded
    layers = prune_structured(dense, windows(8, 24), StructuredConfig(units=("layers",), ratio=0.34)).loaded
    return {"dense": dense, "uneven": uneven, "layers": layers}


def torch_greedy(model, prompt, new_tokens):
    """Arg-max decoding by whole forward passes (no stop at an end-of-text id, unlike `generate`)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(new_tokens):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("name,kind", [("dense", "F32"), ("dense", "F16"), ("dense", "Q8_0"), ("dense", "Q4_0"),
                                       ("uneven", "F16"), ("uneven", "Q8_0"), ("layers", "F16")])
def test_llama_cpp_runs_the_file_as_torch_runs_its_weights(models, name, kind, tmp_path):
    lm = models[name]
    path = tmp_path / f"{name}-{kind}.gguf"
    result = export_gguf(lm, path, kind, fallback="F16")
    assert result["architecture"]["name"] == ("deci" if name == "uneven" else "llama")
    ids = windows()
    prompt = ids[0, :8].tolist()
    with gguf_weights_applied(lm, path):  # torch on exactly the file's weights (rounded/quantized)
        expected = torch_greedy(lm.model, prompt, 16)
        with torch.no_grad():
            reference = lm.model(input_ids=ids[:1]).logits[0].numpy()
        torch_ppl = perplexity(lm, ids).ppl
    assert len(set(expected)) > 3  # a varied continuation, so agreement means something
    with opened_gguf(path, n_ctx=SEQLEN) as llm:
        llm.reset()
        llm.eval(ids[0].tolist())
        logits = np.asarray(llm.scores[:SEQLEN])
        # llama.cpp keeps its key/value cache in F16 and, for Q8_0/Q4_0 matrices, rounds the activations to 8
        # bits before each product: logits agree to about 1 % (16-bit files) or 20 % (quantized) of their spread.
        spread = float(reference.std())
        assert float(np.abs(logits - reference).max()) < (0.05 if kind in ("F32", "F16") else 0.3) * spread
        top_two = np.sort(reference, axis=-1)[:, -2:]
        clear = (top_two[:, 1] - top_two[:, 0]) > 0.1 * spread  # positions whose top token is not a near-tie
        assert clear.sum() > SEQLEN // 2
        assert (logits.argmax(-1) == reference.argmax(-1))[clear].all()
        if kind in ("F32", "F16"):  # whole greedy continuations (one near-tie flips the rest of a quantized one)
            assert greedy_tokens(path, prompt, 16, llm=llm) == expected
        ours = llama_cpp_perplexity(path, ids, llm=llm)
    assert ours["tokens"] == ids.shape[0] * (SEQLEN - 1)
    assert abs(ours["ppl"] / torch_ppl - 1) < 0.01


def test_llama_cpp_tokenizes_text_as_the_hugging_face_tokenizer(models, tmp_path):
    lm = models["dense"]
    export_gguf(lm, tmp_path / "t.gguf", "F16")
    text = "The quick brown fox jumps over the lazy dog, 123 times: perplexity!"
    with opened_gguf(tmp_path / "t.gguf", n_ctx=64) as llm:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == \
            lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert llm.detokenize(lm.tokenizer(text, add_special_tokens=False)["input_ids"]).decode() == text


def test_require_llama_cpp_gives_the_module():
    assert hasattr(require_llama_cpp(), "Llama")

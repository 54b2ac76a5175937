"""GGUF export of the embedded SmolLM2-135M: re-exported as Q4_1 it reproduces the embedded model's own Q4_1 file
tensor for tensor (names, rope row order, types, bytes); in llama.cpp (when llama-cpp-python is installed) its F16
and Q8_0 files give the torch model's greedy tokens and perplexity within 1 % of PruneScope's on the same weights."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from pruning_core.gguf.read import gguf_weights_applied
from pruning_core.gguf.runtime import greedy_tokens, llama_cpp_available, llama_cpp_perplexity, opened_gguf
from pruning_core.gguf.write import export_gguf
from pruning_core.metrics import perplexity
from pruning_core.models import embedded_gguf_path
from pruning_core.protocol import Protocol, evaluation_ids

pytestmark = pytest.mark.embedded


def test_q4_1_export_reproduces_the_embedded_file(embedded, tmp_path):
    path = tmp_path / "embedded-Q4_1.gguf"
    result = export_gguf(embedded, path, "Q4_1")
    assert result["tokenizer"]["source"].startswith("carried over from")
    ours = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    theirs = {t.name: t for t in gguf.GGUFReader(str(embedded_gguf_path())).tensors}
    assert set(ours) == set(theirs)
    for name, tensor in theirs.items():
        assert ours[name].tensor_type == tensor.tensor_type, name
        assert np.array_equal(np.asarray(ours[name].data), np.asarray(tensor.data)), name


@pytest.mark.skipif(not llama_cpp_available(),
                    reason="llama-cpp-python is not installed (pip install '.[llama]' compiles llama.cpp).")
@pytest.mark.parametrize("kind", ["F16", "Q8_0"])
def test_llama_cpp_matches_torch_on_the_exported_weights(embedded, kind, tmp_path):
    path = tmp_path / f"embedded-{kind}.gguf"
    export_gguf(embedded, path, kind)
    ids = evaluation_ids(embedded, "wiki", Protocol(seqlen=256, eval_windows=2))
    prompt = embedded.tokenizer("The history of the city begins", add_special_tokens=False)["input_ids"]
    with gguf_weights_applied(embedded, path), torch.inference_mode():
        torch_ppl = perplexity(embedded, ids).ppl
        expected = list(prompt)
        for _ in range(16):
            expected.append(int(embedded.model(input_ids=torch.tensor([expected])).logits[0, -1].argmax()))
        logits = torch.stack([embedded.model(input_ids=w[None]).logits[0, :-1] for w in ids])
    with opened_gguf(path, n_ctx=256) as llm:
        greedy = greedy_tokens(path, prompt, 16, llm=llm)
        ours = llama_cpp_perplexity(path, ids, llm=llm, keep_top1=True)
    assert abs(ours["ppl"] / torch_ppl - 1) < 0.01
    top2 = logits.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) >= 0.5  # not a near-tie
    agree = torch.from_numpy(ours["top1"]) == logits.argmax(-1)
    assert clear.sum() > 100 and float(agree[clear].float().mean()) > 0.99
    if kind == "F16":
        assert greedy == expected[len(prompt):]
    else:  # llama.cpp rounds the activations to 8 bits as well: this prompt meets a near-tie at its third token
        assert greedy[:2] == expected[len(prompt):len(prompt) + 2]

"""The blocked CPU attention kernel: transformers' eager bf16 numerics, SDPA everywhere outside its case."""

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.llama.modeling_llama import eager_attention_forward

from pruning_core.devices.cpu_attention import NAME, attention_forward, blocked_attention, blocked_causal_attention
from pruning_core.models.tiny import tiny_model
from pruning_core.precision import autocast_for


class _Module(torch.nn.Module):
    """What transformers' attention functions read from the attention module."""

    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True
        self.training = False


def _inputs(batch=2, heads=6, kv_heads=2, seqlen=100, dim=16, dtype=torch.bfloat16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, h, seqlen, dim, generator=generator).to(dtype)
               for h in (heads, kv_heads, kv_heads))
    return q, k, v


def _eager(q, k, v, scaling):
    mask = torch.full((q.shape[2], k.shape[2]), float("-inf"), dtype=q.dtype).triu(1)[None, None]
    out, _ = eager_attention_forward(_Module(q.shape[1] // k.shape[1]), q, k, v, mask, scaling=scaling)
    return out


@pytest.mark.parametrize("block", [16, 32, 64, 128])
@pytest.mark.parametrize("scaling", [0.25, 0.3])  # a power of two (applied to the queries) and not
def test_blocked_kernel_equals_transformers_eager_attention_in_bf16(block, scaling):
    # 100 positions: a ragged last block, and at 128 a single block; 6 query heads over 2 key/value heads,
    # laid out as the model makes them (heads transposed out of (batch, seq, heads, dim)).
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in _inputs())
    ours = blocked_causal_attention(q, k, v, scaling, block=block)
    assert ours.shape == (2, 100, 6, 16) and ours.is_contiguous()
    torch.testing.assert_close(ours, _eager(q, k, v, scaling), rtol=0, atol=0)


def test_blocked_kernel_is_as_close_to_fp32_attention_as_eager_bf16_is():
    q, k, v = _inputs(seed=1)
    exact = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float().repeat_interleave(3, 1), v.float().repeat_interleave(3, 1), is_causal=True
    ).transpose(1, 2)
    ours = (blocked_causal_attention(q, k, v, 16 ** -0.5).float() - exact).abs().max()
    eager = (_eager(q, k, v, 16 ** -0.5).float() - exact).abs().max()
    assert float(ours) <= float(eager) + 1e-6 and float(ours) < 0.05


@pytest.mark.parametrize("case", ["mask", "fp32", "one_query", "not_causal", "softcap"])
def test_anything_outside_its_case_goes_to_sdpa(case):
    dtype = torch.float32 if case == "fp32" else torch.bfloat16
    q, k, v = _inputs(dtype=dtype)
    module, mask, kwargs = _Module(3), None, {}
    if case == "mask":
        mask = torch.zeros(2, 1, 100, 100, dtype=dtype)
        mask[..., :5] = float("-inf")  # padding on the left: not a plain causal pattern
    elif case == "one_query":
        q = q[:, :, -1:]
    elif case == "not_causal":
        module.is_causal = False
    elif case == "softcap":
        kwargs["softcap"] = 30.0
    if case == "softcap":
        with pytest.raises(ValueError, match="softcap"):  # SDPA's own refusal: the case reached SDPA
            attention_forward(module, q, k, v, mask, scaling=0.25, **kwargs)
        return
    ours, _ = attention_forward(module, q, k, v, mask, scaling=0.25, **kwargs)
    theirs, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.25, **kwargs)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_the_switch_restores_the_model_and_leaves_other_implementations_alone(monkeypatch):
    from pruning_core.devices import cpu_attention

    calls = []
    kernel = cpu_attention.blocked_causal_attention
    monkeypatch.setattr(cpu_attention, "blocked_causal_attention", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    loaded = tiny_model("llama", layers=2, hidden=64)
    model = loaded.model
    model.config._attn_implementation = "sdpa"
    ids = torch.randint(3, 200, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), autocast_for("bfloat16"):
        dense = model(ids).logits
        with blocked_attention(model):
            assert model.config._attn_implementation == NAME
            blocked = model(ids).logits
    assert model.config._attn_implementation == "sdpa" and len(calls) == 2  # once per layer, inside only
    # Same model, another attention kernel in bf16: logits agree to bf16 rounding.
    torch.testing.assert_close(blocked, dense, rtol=0.05, atol=0.05)
    with pytest.raises(RuntimeError, match="inside"):
        with blocked_attention(model):
            raise RuntimeError("inside")
    assert model.config._attn_implementation == "sdpa"
    model.config._attn_implementation = "eager"
    with blocked_attention(model):
        assert model.config._attn_implementation == "eager"


def test_bf16_exact_map_runs_the_blocked_kernel_and_equals_full_forwards_with_it(monkeypatch):
    from dataclasses import replace

    from pruning_core.analysis.sensitivity import compute_sensitivity
    from pruning_core.devices import cpu_attention
    from pruning_core.masks import UNSTRUCTURED, applied_masks
    from pruning_core.methods import MethodOptions, get_method
    from pruning_core.metrics import perplexity
    from pruning_core.models import load_model, to_native, weight_matrix
    from pruning_core.protocol import Protocol, evaluation_ids

    calls = []
    kernel = cpu_attention.blocked_causal_attention
    monkeypatch.setattr(cpu_attention, "blocked_causal_attention", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    loaded = load_model("tiny-llama")
    assert loaded.model.config._attn_implementation == "sdpa"
    protocol = Protocol(calib="news", nsamples=8, seqlen=64, eval_windows=4, batch_size=4, dtype="bfloat16")
    exact = compute_sensitivity(loaded, protocol, "magnitude", [0.5], metrics=["exact"], probe_windows=3,
                                dtype="bfloat16")["maps"][0]
    assert calls, "the bf16 probes did not run the blocked kernel"
    assert loaded.model.config._attn_implementation == "sdpa"  # put back
    # The same cell by full forwards of the model with the kernel switched on: the map is the model's own loss.
    probe = evaluation_ids(loaded, "news", replace(protocol, eval_windows=3))[:3]
    name = loaded.adapter.qualified_name(1, "down")
    module = loaded.model.get_submodule(name)
    keep, _ = get_method("magnitude").prune(weight_matrix(module).float(), None, 0.5, UNSTRUCTURED, MethodOptions())
    with blocked_attention(loaded.model):
        dense = perplexity(loaded, probe, dtype="bfloat16").nll
        with applied_masks(loaded.model, {name: to_native(module, keep)}):
            pruned = perplexity(loaded, probe, dtype="bfloat16").nll
    assert exact["baseline_loss"] == pytest.approx(dense, abs=1e-5)
    assert exact["values"][1][loaded.adapter.module_kinds.index("down")] == pytest.approx(pruned - dense, abs=1e-5)

"""Causal self-attention for bf16 probes on CPU, about twice as fast as torch's SDPA kernel there.

Why: the exact sensitivity map runs hundreds of forwards over 512-token windows. On a CPU without AMX,
`scaled_dot_product_attention` in bf16 reaches about 60 GFLOP/s (it computes in fp32 inside), a quarter of
every probe's time while the model's matmuls run at the bf16 rate (about 390 GFLOP/s on the 2-core EPYC).

How: the queries are cut into blocks of `BLOCK` positions; a block attends only to the keys up to its own end
(the causal triangle, so nothing above the diagonal block is computed), and the query heads that share one
key/value head (grouped-query attention) are stacked into the rows of one matrix, so each block is two bf16
batched matmuls over the key/value heads and one bf16 softmax (fp32 inside). The numerics are those of
transformers' eager attention in bf16 (bf16 scores scaled after the product, softmax in fp32 rounded to
bf16, bf16 probabilities times values): `tests/unit/devices/test_cpu_attention.py` checks the outputs are equal.

It is registered with transformers' `AttentionInterface` under `NAME` and used only inside
`blocked_attention(model)`, which switches the model's attention implementation for a `with` block and puts
it back after (a cached model is never left changed). Anything outside its case (a mask, padding, a GPU,
fp32, dropout, soft-capping, sliding windows, cross- or single-token attention) goes to transformers' own
SDPA function unchanged.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn

#: Name of the attention implementation in transformers' `AttentionInterface`.
NAME = "prunescope_cpu_blocked"
#: Query positions per block. For 8 windows x 512 tokens x 9 heads (3 key/value heads) on the 2-core EPYC,
#: 32-64 were fastest (15-20 ms, the machine's noise), 128 took 22-27 ms and torch's SDPA 36-40 ms.
BLOCK = 64
#: Name of the blocked kernel's calls in a torch profile (benchmarks/final_map_efficiency.py reads it).
PROFILER_LABEL = "prunescope::blocked_attention"
#: Keyword arguments that change what attention computes; when one is set the SDPA path is taken.
_SPECIAL = ("softcap", "sliding_window", "s_aux", "position_bias", "output_attentions")


def blocked_causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float,
                             block: int = BLOCK) -> torch.Tensor:
    """Causal attention of query (B, H, S, D) over key/value (B, KV, S, D), H a multiple of KV, all bf16.

    Returns (B, S, H, D) contiguous, the layout transformers' attention functions return.
    """
    batch, heads, seqlen, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    out = torch.empty(batch, seqlen, kv_heads, groups, dim, dtype=query.dtype)
    grouped = query.view(batch, kv_heads, groups, seqlen, dim)
    keys = key.reshape(batch * kv_heads, seqlen, dim)
    values = value.reshape(batch * kv_heads, seqlen, dim)
    # A power-of-two scale (1/8 for 64-wide heads) is exact in bf16 on either side of the product, so it rides on
    # the copy that stacks the queries instead of costing a pass over the (larger) scores.
    on_queries = math.frexp(scaling)[0] == 0.5
    for start in range(0, seqlen, block):
        end = min(start + block, seqlen)
        rows = end - start
        # (B*KV, G*rows, D): the query heads of one key/value head, stacked, so one product serves them all
        queries = torch.empty(batch * kv_heads, groups * rows, dim, dtype=query.dtype)
        stacked = queries.view(batch, kv_heads, groups, rows, dim)
        if on_queries:
            torch.mul(grouped[:, :, :, start:end], scaling, out=stacked)
        else:
            stacked.copy_(grouped[:, :, :, start:end])
        scores = torch.bmm(queries, keys[:, :end].transpose(1, 2))
        if not on_queries:
            scores.mul_(scaling)
        # Only the diagonal block has positions after the query's own: mask them there.
        scores.view(batch * kv_heads, groups, rows, end)[..., start:end].add_(
            torch.full((rows, rows), float("-inf"), dtype=scores.dtype).triu_(1))
        probabilities = torch.softmax(scores, dim=-1)
        mixed = torch.bmm(probabilities, values[:, :end]).view(batch, kv_heads, groups, rows, dim)
        out[:, start:end] = mixed.permute(0, 3, 1, 2, 4)
    return out.view(batch, seqlen, heads, dim)


def _handles(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             attention_mask: Optional[torch.Tensor], dropout: float, kwargs: dict) -> bool:
    return (query.device.type == "cpu" and query.dtype == key.dtype == value.dtype == torch.bfloat16
            and attention_mask is None and not dropout and getattr(module, "is_causal", True)
            and kwargs.get("is_causal", True) is not False
            and query.shape[2] == key.shape[2] > 1 and query.shape[1] % key.shape[1] == 0
            and not any(kwargs.get(name) for name in _SPECIAL))


def attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Optional[torch.Tensor], dropout: float = 0.0,
                      scaling: Optional[float] = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: the blocked kernel in its case, SDPA otherwise."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
        # Under bf16 autocast, rotary embeddings in fp32 promote query and key to fp32 and SDPA casts all three
        # back to bf16 (an autocast op): do the same cast here.
        query, key, value = (t.to(torch.bfloat16) for t in (query, key, value))
    if not _handles(module, query, key, value, attention_mask, dropout, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    with torch.profiler.record_function(PROFILER_LABEL):  # so a profile can tell attention from other products
        return blocked_causal_attention(query, key, value, scale), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, attention_forward)  # idempotent: the same function under the same name


def _configs(model: nn.Module) -> list:
    """The model's config and every sub-config carrying an attention implementation."""
    config = getattr(model, "config", None)
    if config is None:
        return []
    found = [config]
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if sub is not None and hasattr(sub, "_attn_implementation"):
            found.append(sub)
    return found


@contextmanager
def blocked_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, the model's SDPA attention runs the blocked CPU kernel where it applies.

    Models configured with another implementation (eager, flash, flex) are left as they are. The previous
    implementation is restored on exit, even on error.
    """
    configs = [c for c in _configs(model) if getattr(c, "_attn_implementation_internal", None) == "sdpa"]
    if not configs:
        yield model
        return
    _register()
    try:
        for config in configs:
            config._attn_implementation_internal = NAME
        yield model
    finally:
        for config in configs:
            config._attn_implementation_internal = "sdpa"

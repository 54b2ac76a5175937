"""Compute precision: the dtypes a forward pass may run in, and the autocast context that selects one.

Kept apart from `metrics` (evaluation) and `walk` (the layer walk) because both use it and `metrics` imports
`walk`: one small module below both keeps the import graph free of circles.
"""

from __future__ import annotations

import contextlib

import torch

from pruning_core.errors import ConfigError

#: Compute dtypes of forward passes. Weights are fp32 unless the model was loaded with bf16 storage
#: (`models.loading.WEIGHT_DTYPES`, a source ending in "@bfloat16"), which computes in bf16 (`compute_dtype`).
EVAL_DTYPES = ("float32", "bfloat16")


def compute_dtype(asked: str, module: torch.nn.Module) -> str:
    """The compute dtype a forward of `module` can run in: `asked`, except "bfloat16" when the module's weights
    are stored in bf16 (fp32 activations cannot meet bf16 weights without autocast, and an fp32 copy of the
    weights is what bf16 storage is there to avoid). Statistics, Hessians and perplexity sums stay fp32/fp64
    either way: they are accumulated from whatever reaches them, cast up first."""
    weight = next((p for p in module.parameters() if p.is_floating_point()), None)
    if weight is not None and weight.dtype == torch.bfloat16:
        return "bfloat16"
    return asked


def autocast_for(dtype: str):
    """bf16 autocast (weights stay fp32; matmuls run in bf16: AVX512-BF16 or AMX on CPUs), or a no-op for fp32."""
    if dtype not in EVAL_DTYPES:
        raise ConfigError(f"Evaluation dtype '{dtype}' is unknown; use one of {', '.join(EVAL_DTYPES)}.")
    if dtype == "bfloat16":
        # Autocast is per device type: enable it for the CPU always and for CUDA where there is one, so that the
        # ops run in bf16 wherever the tensors are (a CPU run on a GPU machine, or a layer offloaded to the GPU).
        stack = contextlib.ExitStack()
        stack.enter_context(torch.autocast(device_type="cpu", dtype=torch.bfloat16))
        if torch.cuda.is_available():
            stack.enter_context(torch.autocast(device_type="cuda", dtype=torch.bfloat16))
        return stack
    return contextlib.nullcontext()

"""Compute precision: the dtypes a forward pass may run in, and the autocast context that selects one.

Kept apart from `metrics` (evaluation) and `walk` (the layer walk) because both use it and `metrics` imports
`walk`: one small module below both keeps the import graph free of circles.
"""

from __future__ import annotations

import contextlib

import torch

from pruning_core.errors import ConfigError

#: Compute dtypes of forward passes; weights always stay fp32.
EVAL_DTYPES = ("float32", "bfloat16")


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

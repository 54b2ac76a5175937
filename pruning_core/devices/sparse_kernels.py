"""2:4 masks on GPU sparse tensor cores: can this machine run them, and how much faster are they, measured.

A 2:4 mask (two of every four consecutive input weights kept) is the one sparsity pattern with common fast
kernels: NVIDIA GPUs of compute capability 8.0 or newer (Ampere, Hopper) multiply a 2:4 matrix stored in
compressed form on their sparse tensor cores, and PyTorch exposes that as semi-structured sparse tensors
(`torch.sparse.to_sparse_semi_structured`, in fp16/bf16). Whether it pays end to end depends on the shapes, the
batch and the rest of the model, so this module never predicts a speed-up: `measure_two_four_speed` times the
same pruned model with its linear weights dense and then in the compressed form, on the machine at hand, and the
report says the measured ratio (`claims.speed_sentence(..., measured)`). Where the kernels are not available
(a CPU, an older GPU, a torch without them) it says why in one sentence and times nothing.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
from torch import nn

from pruning_core.errors import ConfigError
from pruning_core.masks import applied_masks

#: Oldest compute capability with sparse tensor cores (Ampere).
MIN_CAPABILITY = (8, 0)
#: Dtypes the semi-structured kernels take for weights and activations.
KERNEL_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def two_four_support(device: torch.device) -> Optional[str]:
    """None when `device` can multiply 2:4 matrices on sparse tensor cores, else one sentence saying why not."""
    device = torch.device(device)
    if device.type != "cuda":
        return (f"2:4 sparse kernels need an NVIDIA GPU with sparse tensor cores; this run is on {device.type}, "
                "where 2:4 zeros are multiplied like any others (no speed-up to measure).")
    if not torch.cuda.is_available():
        return "2:4 sparse kernels need CUDA, and torch sees no GPU on this machine."
    capability = torch.cuda.get_device_capability(device)
    if tuple(capability) < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return (f"{name} has compute capability {capability[0]}.{capability[1]}; 2:4 sparse tensor cores need "
                f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} (Ampere) or newer.")
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return f"This torch ({torch.__version__}) has no semi-structured sparse tensors; install torch 2.1 or newer."
    return None


def is_two_four(keep: torch.Tensor) -> bool:
    """Whether the keep-mask `keep` (out, in) keeps at most 2 of every 4 consecutive inputs of each row (the
    layout the kernels compress; a group with fewer kept weights stores zeros as values)."""
    if keep.dim() != 2 or keep.shape[1] % 4:
        return False
    groups = keep.reshape(keep.shape[0], -1, 4).sum(dim=-1)
    return bool((groups <= 2).all())


@dataclass(frozen=True)
class KernelSpeedConfig:
    """How the 2:4 kernels are timed.

    tokens: prompt length of the prefill (tokens per sequence); batch: sequences per forward (the kernels pay
    off on large matmuls, so prefill is where a gain shows first); dtype: "float16" or "bfloat16" (weights and
    activations, both copies); repeats: timed forwards per side after `warmup` untimed ones (the median counts).
    """

    tokens: int = 2048
    batch: int = 1
    dtype: str = "float16"
    repeats: int = 10
    warmup: int = 3

    def validate(self) -> "KernelSpeedConfig":
        if self.dtype not in KERNEL_DTYPES:
            raise ConfigError(f"2:4 kernels run in {' or '.join(KERNEL_DTYPES)}, not '{self.dtype}'.")
        if self.tokens < 8 or self.batch < 1 or self.repeats < 1 or self.warmup < 0:
            raise ConfigError("tokens must be at least 8, batch and repeats at least 1, warmup 0 or more.")
        return self


def _median_seconds(run, repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall seconds of `run()` on `device` (synchronised before and after each call)."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure_two_four_speed(loaded, masks: Mapping[str, torch.Tensor], device: torch.device,
                           weights: Optional[Mapping[str, torch.Tensor]] = None,
                           config: Optional[KernelSpeedConfig] = None) -> dict:
    """Prefill tokens/s of the pruned model with its 2:4 linear weights dense, then compressed for the sparse
    tensor cores, in one run on `device`.

    loaded: the `LoadedModel` (left unchanged: a copy goes to the GPU); masks: {module name: keep mask (out, in)}
    from a 2:4 prune (`PruneResult.masks`); weights: the pruned result's updated weights (SparseGPT), if any.
    Returns {"supported": False, "reason"} where the kernels are not available (see `two_four_support`), else
    {"supported": True, "device" (GPU name), "dtype", "tokens", "batch", "converted" (modules compressed),
    "kept_dense" [{"module", "reason"}] (not 2:4 or a shape the kernels refuse), "dense_seconds",
    "sparse_seconds" (median seconds per forward), "dense_tokens_per_s", "pruned_tokens_per_s", "speedup",
    "max_logit_gap" (largest |difference| of the last-position logits, a check that both sides compute the same
    model), "measured" (the `claims.speed_sentence` argument)}.
    """
    config = (config or KernelSpeedConfig()).validate()
    device = torch.device(device)
    reason = two_four_support(device)
    if reason is not None:
        return {"supported": False, "reason": reason}
    from torch.sparse import to_sparse_semi_structured

    dtype = KERNEL_DTYPES[config.dtype]
    with applied_masks(loaded.model, masks, weights):  # the copy is the pruned model; the cached one is restored
        model = copy.deepcopy(loaded.model).to(device=device, dtype=dtype).eval()
    vocab = int(model.config.vocab_size)
    ids = torch.randint(0, vocab, (config.batch, config.tokens), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1].float()

    dense_logits = forward()
    dense_seconds = _median_seconds(forward, config.repeats, config.warmup, device)
    converted, kept_dense = 0, []
    for name, keep in masks.items():
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            kept_dense.append({"module": name, "reason": f"{type(module).__name__}, not a linear layer"})
            continue
        if not is_two_four(keep):
            kept_dense.append({"module": name, "reason": "its mask is not 2:4 along the input dimension"})
            continue
        try:
            module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach().contiguous()),
                                         requires_grad=False)
        except (RuntimeError, ValueError) as exc:  # e.g. a dimension that is not a multiple of the kernel tile
            kept_dense.append({"module": name, "reason": str(exc).splitlines()[0][:200]})
            continue
        converted += 1
    if converted == 0:
        raise ConfigError("No pruned linear layer could be compressed for the 2:4 kernels (see kept_dense); prune "
                          "with structure 2:4 first.")
    sparse_logits = forward()
    sparse_seconds = _median_seconds(forward, config.repeats, config.warmup, device)
    tokens = config.batch * config.tokens
    dense_tps, sparse_tps = tokens / dense_seconds, tokens / sparse_seconds
    gpu = torch.cuda.get_device_name(device)
    phase = f"prefill of {config.batch} x {config.tokens} tokens"
    out: dict[str, Any] = {
        "supported": True, "device": gpu, "dtype": config.dtype, "tokens": config.tokens, "batch": config.batch,
        "converted": converted, "kept_dense": kept_dense,
        "dense_seconds": dense_seconds, "sparse_seconds": sparse_seconds,
        "dense_tokens_per_s": dense_tps, "pruned_tokens_per_s": sparse_tps, "speedup": sparse_tps / dense_tps,
        "max_logit_gap": float((dense_logits - sparse_logits).abs().max()),
        "measured": {"device": f"{gpu}, {config.dtype}, 2:4 sparse tensor cores ({converted} matrices)",
                     phase: {"dense_tokens_per_s": dense_tps, "pruned_tokens_per_s": sparse_tps}},
    }
    model = None  # free the GPU copy (the closure above shares this cell) before emptying the cache
    torch.cuda.empty_cache()
    return out

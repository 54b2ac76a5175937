"""Masked LoRA: a PEFT LoRA adapter whose update never touches a pruned weight.

A plain LoRA delta B·A is dense, so merging it fills the pruned zeros back in (Wanda's tracker: 40 % sparsity
fell to 32.7 % after a merge). Here every adapted linear is a `MaskedLoraLinear` (a subclass of PEFT's
`lora.Linear`, registered through PEFT's custom-module dispatch): its delta is (B·A·scaling) ⊙ keep, where
`keep` is the base weight's non-zero pattern at the moment the adapter is attached. So

- merging (`merge_and_unload`) adds exactly 0.0 to every pruned weight: the sparsity after merging is the
  sparsity before, bit for bit (SQFT/SPP-style masked merge);
- the unmerged adapter at inference computes x·(W + delta ⊙ keep)ᵀ: the same function as the merged model.

The forward materialises W + masked delta (out x in) once per call instead of PEFT's two thin matmuls: that
costs one extra weight-gradient product in training (about 1.5x a plain LoRA step), which is the price of a
delta that really is masked during training, not only at merge time. The backward rebuilds that weight instead of
keeping it from the forward (`_MaskedLoraMatmul`), so a training step holds one module's effective weight at a
time, not a second copy of the model.

Adapters are saved in PEFT's own format (adapter_config.json + adapter_model.safetensors). The mask is not in
the adapter file: it is the pruned model's zeros (the exported mask re-creates them), so the same file works on
any copy of the pruned model and stays a few MB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pruning_core.errors import ConfigError

try:  # transformers' GPT-2 style linear (weight stored in x out); PEFT adapts it with fan_in_fan_out
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers always has it today
    Conv1D = None

ADAPTER_NAME = "default"


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype a linear's matmul runs in here: the autocast dtype while autocast is on for the weight's
    device (bf16 training of fp32 weights), else the weight's own."""
    device = weight.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


def _masked_delta(keep: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float,
                  fan_in_fan_out: bool, dtype: torch.dtype) -> torch.Tensor:
    """(B·A·scaling) where `keep`, else +0.0, in the base weight's layout and `dtype`. where(), not a product: a
    negative delta times 0 is -0.0, and W + (-0.0) must stay +0.0."""
    product = lora_b @ lora_a
    product = product.t() if fan_in_fan_out else product
    return torch.where(keep, product * scaling, torch.zeros((), dtype=product.dtype, device=product.device)).to(dtype)


def _effective_weight(weight: torch.Tensor, keep: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
                      scaling: float, fan_in_fan_out: bool, compute: torch.dtype) -> torch.Tensor:
    """W + masked delta, summed in the weight's dtype, as the (out, in) matrix of the matmul in `compute`: the
    forward builds it, the backward builds it again instead of keeping it."""
    effective = weight + _masked_delta(keep, lora_a, lora_b, scaling, fan_in_fan_out, weight.dtype)
    return (effective.t() if fan_in_fan_out else effective).to(compute)


class _MaskedLoraMatmul(torch.autograd.Function):
    """y = x·(W + (B·A·s) ⊙ keep)ᵀ + bias, saving for the backward pass only x and references to W, A and B.

    Autograd on the plain expression saved the effective weight of every adapted module (a copy of the model's
    prunable weights, plus its bf16 cast under autocast of fp32 weights) for the whole training step: 14.1 GB
    for TinyLlama-1.1B's shape where the weights are 2.3 GB. Here the backward rebuilds each module's effective
    weight when it reaches it (one rank-r product) and frees it after: gradients are those of the expression, one
    module's weight is held at a time. Matmuls run in the autocast dtype when autocast is on (as F.linear under
    autocast), the sums in the weight's dtype."""

    @staticmethod
    def forward(ctx, x, weight, bias, keep_bits, lora_a, lora_b, scaling, fan_in_fan_out):
        from pruning_core.packed_masks import unpack_bits

        compute = _compute_dtype(weight)
        keep = unpack_bits(keep_bits, tuple(weight.shape))
        effective = _effective_weight(weight, keep, lora_a.to(compute), lora_b.to(compute), scaling, fan_in_fan_out,
                                      compute)
        del keep
        inputs = x.to(compute)  # what F.linear under autocast saves too: the input in the matmul's dtype
        ctx.save_for_backward(inputs, weight, keep_bits, lora_a, lora_b)
        ctx.scaling, ctx.fan_in_fan_out, ctx.compute = scaling, fan_in_fan_out, compute
        ctx.input_dtype, ctx.bias_dtype = x.dtype, None if bias is None else bias.dtype
        return F.linear(inputs, effective, None if bias is None else bias.to(compute))

    @staticmethod
    def backward(ctx, grad_out):
        from pruning_core.packed_masks import unpack_bits

        x, weight, keep_bits, lora_a, lora_b = ctx.saved_tensors
        compute, scaling = ctx.compute, ctx.scaling
        a, b = lora_a.to(compute), lora_b.to(compute)
        keep = unpack_bits(keep_bits, tuple(weight.shape))
        grad_out = grad_out.to(compute)
        grad_x = grad_b = grad_a = grad_bias = None
        if ctx.needs_input_grad[0]:
            effective = _effective_weight(weight, keep, a, b, scaling, ctx.fan_in_fan_out, compute)
            grad_x = (grad_out @ effective).to(ctx.input_dtype)
            del effective
        if ctx.needs_input_grad[4] or ctx.needs_input_grad[5]:
            rows = grad_out.reshape(-1, grad_out.shape[-1])
            grad_effective = rows.t() @ x.reshape(-1, x.shape[-1])  # (out, in); x is saved in `compute`
            if ctx.fan_in_fan_out:
                grad_effective = grad_effective.t()  # the weight's layout, as keep
            grad_product = torch.where(keep, grad_effective * scaling, torch.zeros((), dtype=compute))
            del grad_effective
            if ctx.fan_in_fan_out:
                grad_product = grad_product.t()  # back to B·A's (out, in)
            grad_b = (grad_product @ a.t()).to(lora_b.dtype) if ctx.needs_input_grad[5] else None
            grad_a = (b.t() @ grad_product).to(lora_a.dtype) if ctx.needs_input_grad[4] else None
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0).to(ctx.bias_dtype)
        return grad_x, None, grad_bias, None, grad_a, grad_b, None, None


def _lora_linear_class():
    from peft.tuners.lora import Linear as LoraLinear

    from pruning_core.packed_masks import pack_bits, unpack_bits

    class MaskedLoraLinear(LoraLinear):
        """PEFT's LoRA linear with its delta multiplied by the base weight's keep pattern (see the module doc)."""

        def __init__(self, base_layer, adapter_name, config, **kwargs):
            super().__init__(base_layer, adapter_name, config=config, **kwargs)
            weight = self.get_base_layer().weight
            # Bit-packed (an eighth of a byte per weight) and not persistent: the keep pattern is the pruned
            # model's zeros at attach time, never part of the adapter file.
            self.register_buffer("keep_bits", pack_bits(weight.detach() != 0), persistent=False)

        @property
        def keep_pattern(self) -> torch.Tensor:
            """The keep pattern as a bool tensor of the base weight's shape (unpacked on each read)."""
            return unpack_bits(self.keep_bits, tuple(self.get_base_layer().weight.shape))

        def get_delta_weight(self, adapter) -> torch.Tensor:
            delta = super().get_delta_weight(adapter)
            # where(), not a product: a negative delta times 0 is -0.0, and W + (-0.0) must stay +0.0.
            return torch.where(self.keep_pattern, delta, torch.zeros((), dtype=delta.dtype, device=delta.device))

        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            active = [a for a in self.active_adapters if a in self.lora_A]
            if self.disable_adapters or self.merged or not active or kwargs.get("adapter_names") is not None:
                return super().forward(x, *args, **kwargs)
            base = self.get_base_layer()
            if len(active) == 1:  # the training path: the effective weight is rebuilt in backward, not saved
                adapter = active[0]
                return _MaskedLoraMatmul.apply(x, base.weight, getattr(base, "bias", None), self.keep_bits,
                                               self.lora_A[adapter].weight, self.lora_B[adapter].weight,
                                               float(self.scaling[adapter]), bool(self.fan_in_fan_out))
            weight = base.weight
            for adapter in active:
                weight = weight + self.get_delta_weight(adapter).to(weight.dtype)
            if self.fan_in_fan_out:  # Conv1D stores (in, out)
                weight = weight.t()
            return F.linear(x, weight, getattr(base, "bias", None))

    return MaskedLoraLinear


_MASKED_CLASS = None


def masked_lora_class():
    """The `MaskedLoraLinear` class (built once, on first use, so importing this module does not import peft)."""
    global _MASKED_CLASS
    if _MASKED_CLASS is None:
        _MASKED_CLASS = _lora_linear_class()
    return _MASKED_CLASS


def lora_config(targets: Sequence[str], rank: int, alpha: Optional[float] = None,
                rank_pattern: Optional[Mapping[str, int]] = None, dropout: float = 0.0, fan_in_fan_out: bool = False):
    """A PEFT `LoraConfig` whose linears are `MaskedLoraLinear`.

    targets: module names to adapt (full names, matched exactly); rank: default rank r; alpha: LoRA alpha
    (default 2r, PEFT's scaling alpha/r = 2); rank_pattern: {full module name: rank} for modules whose rank
    differs (rank allocation; a module given rank 0 gets no adapter at all and must not be in `targets`).
    """
    from peft import LoraConfig

    if int(rank) < 1:
        raise ConfigError(f"The LoRA rank must be at least 1, got {rank}.")
    if not targets:
        raise ConfigError("No module to adapt: give at least one target linear.")
    # Exact full names, anchored: PEFT matches a string target_modules as a regex over the full name.
    pattern = "^(" + "|".join(_escape(t) for t in targets) + ")$"
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha if alpha is not None else 2 * int(rank)),
                        target_modules=pattern, lora_dropout=float(dropout), bias="none",
                        rank_pattern={_escape(k): int(v) for k, v in (rank_pattern or {}).items()},
                        alpha_pattern={_escape(k): float(alpha if alpha is not None else 2 * int(v))
                                       for k, v in (rank_pattern or {}).items()},
                        fan_in_fan_out=fan_in_fan_out)
    register_masked(config)
    return config


def _escape(name: str) -> str:
    return name.replace(".", r"\.")


def register_masked(config) -> None:
    """Make PEFT build `MaskedLoraLinear` for every nn.Linear (and transformers' Conv1D) the config targets."""
    cls = masked_lora_class()
    mapping = {nn.Linear: cls}
    if Conv1D is not None:
        mapping[Conv1D] = cls
    config._register_custom_module(mapping)


def attach(model: nn.Module, config, adapter_name: str = ADAPTER_NAME):
    """Wrap `model` (already pruned: its zeros are the mask) in a PEFT model with a masked adapter.

    Only the adapter's A and B matrices are trainable. The HF model object is adapted in place (PEFT injects
    its layers), so call this on a copy when the original must stay as it was.
    """
    from peft import get_peft_model

    if getattr(config, "_custom_modules", None) is None:
        register_masked(config)
    peft_model = get_peft_model(model, config, adapter_name=adapter_name)
    masked_modules(peft_model)  # a non-linear target would have got an unmasked PEFT layer
    return peft_model


def load_adapter(model: nn.Module, folder, adapter_name: str = ADAPTER_NAME, is_trainable: bool = False):
    """A pruned `model` with the masked adapter saved in `folder` (PEFT's format) attached; the keep pattern is
    the model's zeros, so attach it to the pruned model (masks applied), not to the dense one."""
    from peft import LoraConfig, PeftModel

    folder = Path(folder)
    if not (folder / "adapter_config.json").exists():
        raise ConfigError(f"{folder} holds no adapter_config.json: give the folder a recovery saved its adapter "
                          f"in (it has adapter_config.json and adapter_model.safetensors).")
    config = LoraConfig.from_pretrained(str(folder))
    register_masked(config)
    return PeftModel.from_pretrained(model, str(folder), adapter_name=adapter_name, config=config,
                                     is_trainable=is_trainable)


def swap_adapter(peft_model, folder, adapter_name: str) -> None:
    """Load another saved adapter into an existing masked PEFT model and make it the active one, without
    reloading the base model. A name already loaded is only made active (its folder is not read again)."""
    from peft import LoraConfig

    folder = Path(folder)
    if adapter_name not in peft_model.peft_config:
        if not (folder / "adapter_config.json").exists():
            raise ConfigError(f"{folder} holds no adapter_config.json: give the folder a recovery saved its "
                              f"adapter in (it has adapter_config.json and adapter_model.safetensors).")
        # Add the adapter with a masked config first: PEFT's own load_adapter would read a plain config, and a
        # module this adapter targets but the loaded ones do not would get an unmasked LoRA layer.
        config = LoraConfig.from_pretrained(str(folder))
        register_masked(config)
        config.inference_mode = True
        peft_model.add_adapter(adapter_name, config)
        peft_model.load_adapter(str(folder), adapter_name=adapter_name)
        masked_modules(peft_model)
    peft_model.set_adapter(adapter_name)


def masked_modules(peft_model) -> dict[str, nn.Module]:
    """{name: MaskedLoraLinear} of a masked PEFT model; raises when some adapted layer is not masked."""
    cls = masked_lora_class()
    from peft.tuners.lora import LoraLayer

    layers = {n: m for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    unmasked = sorted(n for n, m in layers.items() if not isinstance(m, cls))
    if unmasked:
        raise ConfigError(f"These adapted layers are not masked, so merging would fill pruned weights in: "
                          f"{unmasked[:5]}. Adapt only linear layers.")
    return layers


def trainable_parameters(peft_model) -> int:
    """Number of trainable adapter parameters (the A and B matrices)."""
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def merged_copy_sparsity(model: nn.Module, names: Iterable[str]) -> dict:
    """{"zeros", "total", "sparsity"} over the weights of `names` (modules of `model`)."""
    modules = dict(model.named_modules())
    zeros = total = 0
    for name in names:
        weight = modules[name].weight
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return {"zeros": zeros, "total": total, "sparsity": zeros / total if total else 0.0}

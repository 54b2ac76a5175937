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
delta that really is masked during training, not only at merge time.

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


def _lora_linear_class():
    from peft.tuners.lora import Linear as LoraLinear

    class MaskedLoraLinear(LoraLinear):
        """PEFT's LoRA linear with its delta multiplied by the base weight's keep pattern (see the module doc)."""

        def __init__(self, base_layer, adapter_name, config, **kwargs):
            super().__init__(base_layer, adapter_name, config=config, **kwargs)
            weight = self.get_base_layer().weight
            # Not persistent: the keep pattern is the pruned model's zeros, never part of the adapter file.
            self.register_buffer("keep_pattern", weight.detach() != 0, persistent=False)

        def get_delta_weight(self, adapter) -> torch.Tensor:
            delta = super().get_delta_weight(adapter)
            # where(), not a product: a negative delta times 0 is -0.0, and W + (-0.0) must stay +0.0.
            return torch.where(self.keep_pattern, delta, torch.zeros((), dtype=delta.dtype, device=delta.device))

        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            active = [a for a in self.active_adapters if a in self.lora_A]
            if self.disable_adapters or self.merged or not active or kwargs.get("adapter_names") is not None:
                return super().forward(x, *args, **kwargs)
            base = self.get_base_layer()
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

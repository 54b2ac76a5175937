"""Where a causal LM keeps its decoder layers and prunable linears, and the `LoadedModel` every part uses.

An `ArchitectureAdapter` finds the decoder layers and their prunable linears of one model family; GPT-2's
`Conv1D` stores weights transposed, (in, out), so every method works on the (out, in) view returned by
`weight_matrix` and no method knows about Conv1D.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from pruning_core.errors import ModelLoadError


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Where the decoder layers and their prunable linears live in one model family.

    `layers_path` is the dotted attribute path from the CausalLM to the ModuleList of decoder layers;
    `linears` maps a short module kind (shown in heatmaps: "q", "down"...) to its dotted path inside a layer.
    """

    family: str
    layers_path: str
    linears: dict[str, str]

    @property
    def module_kinds(self) -> list[str]:
        """Short names of the prunable linears of one layer, in forward order."""
        return list(self.linears)

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The ModuleList of decoder layers."""
        return model.get_submodule(self.layers_path)

    def layer_linears(self, layer: nn.Module) -> dict[str, nn.Module]:
        """kind -> prunable linear module of one decoder layer."""
        return {kind: layer.get_submodule(path) for kind, path in self.linears.items()}

    def qualified_name(self, layer_index: int, kind: str) -> str:
        """Fully qualified module name, e.g. ``model.layers.3.self_attn.q_proj`` (mask file keys)."""
        return f"{self.layers_path}.{layer_index}.{self.linears[kind]}"

    def prunable_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """qualified name -> module, for every prunable linear of every decoder layer, in walk order."""
        out: dict[str, nn.Module] = {}
        for index, layer in enumerate(self.decoder_layers(model)):
            for kind, module in self.layer_linears(layer).items():
                out[self.qualified_name(index, kind)] = module
        return out


_LLAMA_LINEARS = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}

# Explicit registry: model_type -> adapter. Add a family here, nowhere else.
ADAPTERS: dict[str, ArchitectureAdapter] = {
    "llama": ArchitectureAdapter("llama", "model.layers", _LLAMA_LINEARS),
    "mistral": ArchitectureAdapter("mistral", "model.layers", _LLAMA_LINEARS),
    "qwen2": ArchitectureAdapter("qwen2", "model.layers", _LLAMA_LINEARS),
    "qwen3": ArchitectureAdapter("qwen3", "model.layers", _LLAMA_LINEARS),
    "opt": ArchitectureAdapter(
        "opt",
        "model.decoder.layers",
        {
            "q": "self_attn.q_proj",
            "k": "self_attn.k_proj",
            "v": "self_attn.v_proj",
            "o": "self_attn.out_proj",
            "fc1": "fc1",
            "fc2": "fc2",
        },
    ),
    "gpt2": ArchitectureAdapter(
        "gpt2",
        "transformer.h",
        {"qkv": "attn.c_attn", "o": "attn.c_proj", "fc": "mlp.c_fc", "proj": "mlp.c_proj"},
    ),
}


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """The adapter for a model's `config.model_type`; an unsupported one names the supported families."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise ModelLoadError(
            f"Architecture '{model_type}' is not supported; supported families are "
            f"{', '.join(sorted(ADAPTERS))}. Choose a model of one of these families."
        )
    return ADAPTERS[model_type]


def is_transposed(module: nn.Module) -> bool:
    """True for GPT-2's Conv1D, whose weight is stored (in, out) instead of nn.Linear's (out, in)."""
    return type(module).__name__ == "Conv1D"


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The module's weight as an (out, in) view; writes through the view change the module."""
    weight = module.weight.data
    return weight.t() if is_transposed(module) else weight


def to_native(module: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
    """Turn an (out, in) tensor back into the module's native weight layout (contiguous)."""
    return (matrix.t() if is_transposed(module) else matrix).contiguous()


@dataclass
class LoadedModel:
    """A model ready for pruning: the torch module (eval mode), its tokenizer and identity."""

    model: nn.Module
    tokenizer: object
    source: str
    name: str
    adapter: ArchitectureAdapter
    load_seconds: float = 0.0
    _fingerprint: Optional[str] = field(default=None, repr=False)

    @property
    def fingerprint(self) -> str:
        """sha256 (hex, 16 chars) of the prunable weights' bytes, names and shapes; identifies the weights."""
        if self._fingerprint is None:
            self._fingerprint = weight_fingerprint(self.model, self.adapter)
        return self._fingerprint

    def describe(self) -> dict:
        """Architecture facts for display: family, layers, hidden size, parameter counts, bytes in memory."""
        cfg = self.model.config
        params = sum(p.numel() for p in self.model.parameters())
        prunable = sum(m.weight.numel() for m in self.adapter.prunable_modules(self.model).values())
        mem = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return {
            "name": self.name,
            "source": self.source,
            "family": self.adapter.family,
            "layers": len(self.adapter.decoder_layers(self.model)),
            "hidden_size": getattr(cfg, "hidden_size", getattr(cfg, "n_embd", None)),
            "module_kinds": self.adapter.module_kinds,
            "parameters": params,
            "prunable_parameters": prunable,
            "memory_bytes": mem,
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "fingerprint": self.fingerprint,
        }


def weight_fingerprint(model: nn.Module, adapter: ArchitectureAdapter) -> str:
    """Hash the prunable weights (names, shapes, fp32 bytes): equal fingerprints mean equal weights."""
    digest = hashlib.sha256()
    for name, module in adapter.prunable_modules(model).items():
        weight = module.weight.detach()
        digest.update(f"{name}:{tuple(weight.shape)}".encode())
        digest.update(weight.to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]

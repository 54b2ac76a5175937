"""Where a causal LM keeps its decoder layers and prunable linears, and the `LoadedModel` every part uses.

An `ArchitectureAdapter` says where the decoder layers and their prunable linears of a model live. `adapter_for`
uses an explicit adapter when the family has one (llama, mistral, qwen2, qwen3, opt, gpt2: overrides that fix
their kind names and paths) and otherwise discovers one from the module tree (`discovery`), so any decoder-only
causal LM works; encoder-only and encoder-decoder models are refused with one sentence. GPT-2's `Conv1D`
stores weights transposed, (in, out), so every method works on the (out, in) view returned by `weight_matrix`
and no method knows about Conv1D.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from pruning_core.models import discovery


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Where the decoder layers and their prunable linears live in one model family.

    `layers_path` is the dotted attribute path from the CausalLM to the ModuleList of decoder layers;
    `linears` maps a short module kind (shown in heatmaps: "q", "down"...) to its dotted path inside a layer;
    `final_norm_paths` are the modules (in order) between the last layer's output and the LM head's input.
    `discovered` is True when the adapter was found from the module tree rather than taken from `ADAPTERS`.
    """

    family: str
    layers_path: str
    linears: dict[str, str]
    final_norm_paths: tuple[str, ...] = ()
    discovered: bool = False

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

    def final_norm(self, model: nn.Module) -> nn.Module:
        """The function from the last decoder layer's output to the LM head's input (final norm, projections).

        A path whose module is absent (OPT's optional ``project_out`` is None) is skipped.
        """
        steps = []
        for path in self.final_norm_paths:
            try:
                module = model.get_submodule(path)
            except AttributeError:
                continue
            if module is not None:
                steps.append(module)
        if not steps:
            return nn.Identity()
        return steps[0] if len(steps) == 1 else nn.Sequential(*steps)

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
# Explicit overrides: model_type -> adapter (fixed kind names and paths). Any other decoder-only family is
# discovered from its module tree by `adapter_for`; add an entry here only to pin names a discovery would change.
ADAPTERS: dict[str, ArchitectureAdapter] = {
    "llama": ArchitectureAdapter("llama", "model.layers", _LLAMA_LINEARS, ("model.norm",)),
    "mistral": ArchitectureAdapter("mistral", "model.layers", _LLAMA_LINEARS, ("model.norm",)),
    "qwen2": ArchitectureAdapter("qwen2", "model.layers", _LLAMA_LINEARS, ("model.norm",)),
    "qwen3": ArchitectureAdapter("qwen3", "model.layers", _LLAMA_LINEARS, ("model.norm",)),
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
        ("model.decoder.final_layer_norm", "model.decoder.project_out"),
    ),
    "gpt2": ArchitectureAdapter(
        "gpt2",
        "transformer.h",
        {"qkv": "attn.c_attn", "o": "attn.c_proj", "fc": "mlp.c_fc", "proj": "mlp.c_proj"},
        ("transformer.ln_f",),
    ),
}


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """The adapter for a model: the explicit override of its `config.model_type`, else one discovered from its
    module tree. Encoder-only and encoder-decoder models, and models without decoder layers, raise
    ModelLoadError with one sentence saying so."""
    config = getattr(model, "config", None)
    discovery.check_decoder_only(config)
    model_type = getattr(config, "model_type", None)
    if model_type in ADAPTERS:
        return ADAPTERS[model_type]
    return discover_adapter(model)


def discover_adapter(model: nn.Module) -> ArchitectureAdapter:
    """An adapter found from the module tree alone (see `discovery`), whatever the family."""
    layers_path = discovery.find_layers_path(model)
    linears = discovery.find_linears(model, layers_path)
    family = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
    return ArchitectureAdapter(family, layers_path, linears, discovery.find_final_norm_paths(model, layers_path),
                               discovered=True)


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
        modules = self.adapter.prunable_modules(self.model).values()
        prunable = sum(m.weight.numel() for m in modules)
        # The widest input of a prunable linear (a Llama MLP's down projection: its intermediate size), read from the
        # weights: a width derived from the parameter count is wrong for grouped-query attention.
        widest = max((int(weight_matrix(m).shape[1]) for m in modules), default=None)
        mem = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return {
            "name": self.name,
            "source": self.source,
            "family": self.adapter.family,
            "layers": len(self.adapter.decoder_layers(self.model)),
            "hidden_size": getattr(cfg, "hidden_size", getattr(cfg, "n_embd", None)),
            "vocab_size": getattr(cfg, "vocab_size", None),
            "module_kinds": self.adapter.module_kinds,
            "parameters": params,
            "prunable_parameters": prunable,
            "widest_input": widest,
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

"""Physically remove structured units: slice tensors, fix the modules' width attributes, update the config,
save a Hugging Face folder and load it back.

After slicing, a head unit's q (k, v) rows and o columns are gone, a channel's gate/up (fc1, c_fc) rows and
down (fc2, c_proj) column are gone, and a removed layer is gone from the ModuleList; the attention modules'
width attributes (`num_key_value_groups`, OPT/GPT-2 `num_heads`, GPT-2 `split_size`) follow, so the model runs
in memory with *any* per-layer widths.

What loads with plain `AutoModelForCausalLM.from_pretrained` (no custom code, no trust_remote_code):
- Llama-like families (llama, mistral, qwen2, ...): uniform widths across layers (the config has one
  `num_attention_heads`, `num_key_value_heads`, `head_dim` and `intermediate_size`); `head_dim` is written
  explicitly, so fewer heads keep their size.
- OPT and GPT-2: uniform MLP widths (`ffn_dim`, `n_inner`) and removed layers. Their head size is derived as
  hidden / heads, so a model with heads removed cannot be described by their config.
- Any family: removed layers (`num_hidden_layers`, and `layer_types` where the config has it).
Anything else (per-layer widths, OPT/GPT-2 heads) is saved with the dense widths in the standard fields and
the per-layer widths under ``prunescope_structured`` in config.json; `load_structured` (this module, plain
transformers classes underneath) loads it, and `from_pretrained` alone refuses it with a shape mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from pruning_core.errors import ModelLoadError
from pruning_core.models import LoadedModel, to_native, weight_matrix
from pruning_core.structured.units import LayerLayout, LayerWidths, consumer_kind, producer_rows

CONFIG_KEY = "prunescope_structured"


# ------------------------------------------------------------------------------------------ tensors

def set_matrix(module: nn.Module, matrix: torch.Tensor, bias: Optional[torch.Tensor] = None,
               keep_bias_rows: Optional[list[int]] = None) -> None:
    """Replace `module`'s weight by `matrix` (out, in) (and its bias by `bias`, or by its rows `keep_bias_rows`),
    fixing the shape attributes of nn.Linear (in/out_features) and Conv1D (nf)."""
    old = module.weight
    native = to_native(module, matrix.to(old.dtype))
    module.weight = nn.Parameter(native, requires_grad=old.requires_grad)
    if getattr(module, "bias", None) is not None:
        new_bias = bias if bias is not None else (module.bias.data[keep_bias_rows] if keep_bias_rows is not None
                                                  else module.bias.data)
        module.bias = nn.Parameter(new_bias.to(old.dtype).contiguous(), requires_grad=module.bias.requires_grad)
    out_features, in_features = matrix.shape
    if isinstance(module, nn.Linear):
        module.in_features, module.out_features = int(in_features), int(out_features)
    elif hasattr(module, "nf"):  # transformers' Conv1D
        module.nf = int(out_features)
        if hasattr(module, "nx"):
            module.nx = int(in_features)


def keep_rows(module: nn.Module, rows: list[int]) -> None:
    """Keep only output rows `rows` (and their bias entries) of a linear or Conv1D."""
    index = torch.tensor(rows, dtype=torch.long)
    set_matrix(module, weight_matrix(module)[index].clone(), keep_bias_rows=rows)


def keep_columns(module: nn.Module, columns: list[int], new_weight: Optional[torch.Tensor] = None,
                 new_bias: Optional[torch.Tensor] = None) -> None:
    """Keep only input columns `columns`; `new_weight` (out, |columns|) / `new_bias` replace them (a refit)."""
    index = torch.tensor(columns, dtype=torch.long)
    matrix = weight_matrix(module)[:, index].clone() if new_weight is None else new_weight
    set_matrix(module, matrix, bias=new_bias)


def _parent(layer: nn.Module, path: str) -> nn.Module:
    parent, _, _ = path.rpartition(".")
    return layer.get_submodule(parent) if parent else layer


def remove_units(layout: LayerLayout, adapter, layer: nn.Module, unit_kind: str, removed: list[int],
                 mode: str = "query", new_weight: Optional[torch.Tensor] = None,
                 new_bias: Optional[torch.Tensor] = None) -> None:
    """Remove units `removed` ("heads" or "channels", indices in the dense layer) from a *dense* layer.

    new_weight / new_bias: the consumer's refit weights on its kept columns (`compensate.refit`), or None to
    keep its columns as they are. Nothing removed leaves every tensor untouched.
    """
    if not removed:
        return
    linears = adapter.layer_linears(layer)
    drop_rows: dict[str, set[int]] = {}
    drop_columns: set[int] = set()
    from pruning_core.structured.units import consumer_columns

    for unit in removed:
        for kind, rows in producer_rows(layout, unit_kind, unit, mode).items():
            drop_rows.setdefault(kind, set()).update(rows)
        drop_columns.update(consumer_columns(layout, unit_kind, unit, mode))
    for kind, rows in drop_rows.items():
        total = weight_matrix(linears[kind]).shape[0]
        keep_rows(linears[kind], [r for r in range(total) if r not in rows])
    consumer = linears[consumer_kind(layout, unit_kind)]
    total = weight_matrix(consumer).shape[1]
    keep_columns(consumer, [c for c in range(total) if c not in drop_columns], new_weight, new_bias)
    if unit_kind == "heads":
        _fix_attention(layout, adapter, layer)
    else:
        mlp = _parent(layer, adapter.linears[layout.mlp_consumer])
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = weight_matrix(consumer).shape[1]


def _fix_attention(layout: LayerLayout, adapter, layer: nn.Module) -> None:
    """Set the attention module's head counts from its sliced tensors (what its forward reads)."""
    widths = layer_widths(layout, adapter, layer)
    attention = _parent(layer, adapter.linears[layout.o])
    if hasattr(attention, "num_key_value_groups"):
        attention.num_key_value_groups = widths.heads // widths.kv_heads
    for name, value in (("num_heads", widths.heads), ("num_key_value_heads", widths.kv_heads)):
        if hasattr(attention, name):
            setattr(attention, name, value)
    if layout.style == "gpt2":
        attention.split_size = widths.heads * layout.head_dim


def layer_widths(layout: LayerLayout, adapter, layer: nn.Module) -> LayerWidths:
    """Query heads, key/value heads and MLP channels of a (possibly sliced) layer, read from its tensors."""
    linears = adapter.layer_linears(layer)
    d = layout.head_dim
    heads = weight_matrix(linears[layout.o]).shape[1] // d
    if layout.fused_qkv:
        kv_heads = (weight_matrix(linears[layout.q]).shape[0] - heads * d) // (2 * d)
    else:
        kv_heads = weight_matrix(linears[layout.k]).shape[0] // d
    return LayerWidths(int(heads), int(kv_heads), int(weight_matrix(linears[layout.mlp_consumer]).shape[1]))


def model_widths(loaded: LoadedModel, layout: LayerLayout) -> list[LayerWidths]:
    """Widths of every decoder layer of `loaded`, read from its tensors."""
    return [layer_widths(layout, loaded.adapter, layer) for layer in loaded.adapter.decoder_layers(loaded.model)]


def remove_layers(loaded: LoadedModel, keep: list[int]) -> None:
    """Keep only decoder layers `keep` (indices, ascending) of `loaded.model`; renumbers their `layer_idx`
    and updates `num_hidden_layers` (and `layer_types` where the config has it)."""
    if len(keep) == len(loaded.adapter.decoder_layers(loaded.model)):
        return
    parent_path, _, name = loaded.adapter.layers_path.rpartition(".")
    parent = loaded.model.get_submodule(parent_path) if parent_path else loaded.model
    layers = getattr(parent, name)
    setattr(parent, name, nn.ModuleList([layers[i] for i in keep]))
    for new_index, layer in enumerate(getattr(parent, name)):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = loaded.model.config
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)


# ------------------------------------------------------------------------------------------ config and files

def loadable_with_transformers(layout: LayerLayout, widths: list[LayerWidths]) -> tuple[bool, str]:
    """(True, "") when plain `from_pretrained` can describe these widths, else (False, the reason)."""
    if len({w.to_dict().__repr__() for w in widths}) > 1:
        return False, ("the layers have different widths, which one Hugging Face config cannot describe; "
                       "load it with pruning_core.structured.load_structured")
    if widths and layout.style in ("opt", "gpt2") and widths[0].heads != layout.heads:
        return False, (f"{layout.style.upper()}'s config derives the head size from hidden / heads, so removed "
                       "heads cannot be described; load it with pruning_core.structured.load_structured")
    if widths and layout.style == "llama" and widths[0].heads and layout.hidden % widths[0].heads:
        # transformers 5 validates Llama-like configs strictly: hidden size a multiple of the heads, even with an
        # explicit head_dim (TinyLlama's 2048 features with 24 of its 32 heads left failed to load back).
        return False, (f"the hidden size ({layout.hidden}) is not a multiple of the {widths[0].heads} heads left, "
                       "which a Llama-like Hugging Face config refuses; load it with "
                       "pruning_core.structured.load_structured")
    return True, ""


def width_fields(layout: LayerLayout, widths: LayerWidths) -> dict:
    """The config fields that describe uniform `widths` in the family's Hugging Face config."""
    if layout.style == "llama":
        return {"num_attention_heads": widths.heads, "num_key_value_heads": widths.kv_heads,
                "head_dim": layout.head_dim, "intermediate_size": widths.channels}
    if layout.style == "opt":
        return {"num_attention_heads": widths.heads, "ffn_dim": widths.channels}
    return {"n_head": widths.heads, "n_inner": widths.channels}


def save_structured(loaded: LoadedModel, layout: LayerLayout, out_dir) -> dict:
    """Write `loaded` (a structurally pruned model) as a Hugging Face folder; returns the structured record
    written to config.json under ``prunescope_structured`` (widths per layer, loadable_with_transformers, note).

    layout: the *dense* model's layout (head size, dense widths). The tokenizer is saved beside it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = loaded.model
    if getattr(model.config, "quantization_config", None) is not None:  # GGUF-loaded: weights are floats
        del model.config.quantization_config
    model.save_pretrained(out)
    if hasattr(loaded.tokenizer, "save_pretrained"):
        loaded.tokenizer.save_pretrained(out)
    widths = model_widths(loaded, layout)
    loadable, note = loadable_with_transformers(layout, widths)
    dense = LayerWidths(layout.heads, layout.kv_heads, layout.intermediate)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config.update(width_fields(layout, widths[0] if loadable and widths else dense))
    record = {"layer_widths": [w.to_dict() for w in widths], "dense_widths": dense.to_dict(),
              "head_dim": layout.head_dim, "loadable_with_transformers": loadable, "note": note}
    config[CONFIG_KEY] = record
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    return record


def load_structured(folder, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load a folder written by `save_structured` (plain transformers classes, no remote code), whatever its
    widths: a folder plain `from_pretrained` can read is read that way; otherwise the model is built with the
    dense widths, each layer is sliced to its recorded widths, and the saved tensors are loaded strictly."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    record = getattr(config, CONFIG_KEY, None)
    if not record or record.get("loadable_with_transformers", True):
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    from safetensors.torch import load_file

    from pruning_core.models.adapters import adapter_for

    model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    adapter = adapter_for(model)
    shell = LoadedModel(model, None, str(folder), folder.name, adapter)
    from pruning_core.structured.units import layout_for

    layout = layout_for(shell)
    mode = "query" if layout.is_gqa else "group"
    for layer, widths in zip(adapter.decoder_layers(model), record["layer_widths"]):
        query_mode = layout.is_gqa and widths["kv_heads"] == layout.kv_heads
        if query_mode:  # fewer query heads in every group
            per_group = widths["heads"] // layout.kv_heads
            removed = [g * layout.group_size + i for g in range(layout.kv_heads)
                       for i in range(per_group, layout.group_size)]
            remove_units(layout, adapter, layer, "heads", removed, "query")
        else:
            remove_units(layout, adapter, layer, "heads", list(range(widths["kv_heads"], layout.kv_heads)),
                         "group" if layout.is_gqa else mode)
        remove_units(layout, adapter, layer, "channels", list(range(widths["channels"], layout.intermediate)))
    state = {}
    for path in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(path)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [m for m in missing if m not in tied and not any(m.endswith(t) for t in tied)]
    if missing or unexpected:
        raise ModelLoadError(f"The structured folder {folder} does not match its recorded widths (missing "
                             f"{missing[:3]}, unexpected {unexpected[:3]}); save it again with save_structured.")
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    return model

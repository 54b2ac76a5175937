"""Structured units of a decoder layer: attention heads, MLP intermediate channels, whole layers.

A unit is a set of weights that leaves together: the rows of the linears that *produce* some features and
the matching columns of the linear that *consumes* them (the consumer's input features are the unit's
"columns"). `layout_for` reads the adapter's module kinds and the config and returns a `LayerLayout`; three
layer shapes are known:

- Llama-like (llama, mistral, qwen2, qwen3 and any discovered family with q/k/v/o + gate/up/down kinds):
  heads are rows of q (and of k, v for a key/value group) + columns of o; a channel is one row of gate and of
  up + one column of down.
- OPT-like (q/k/v/o + fc1/fc2): multi-head attention, so a head is q, k, v rows + o columns; a channel is a
  fc1 row (and its bias) + a fc2 column.
- GPT-2 (fused qkv Conv1D ``c_attn`` + ``c_proj``; ``c_fc`` + ``c_proj``): the same units; Conv1D weights are
  read through `weight_matrix`, an (out, in) view, so nothing below knows about the transposed storage.

Grouped-query attention (num_key_value_heads < num_attention_heads): two head modes.
- ``"query"`` (default): the unit is one query head; every key/value group loses the *same number* of query
  heads, so every group keeps the same size, `num_key_value_heads` is unchanged and `num_attention_heads`
  stays a multiple of it (the config stays loadable). k and v are untouched.
- ``"group"``: the unit is a whole key/value group: its k and v rows and all its query heads.
For multi-head attention (one query head per group) both modes are the same: a head takes its q, k, v rows.

At least one head unit and one channel per layer are always kept (a zero-width linear has no meaning for the
attention kernels); to drop a whole block use the layer unit. Sizes below count real tensor elements,
biases included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from pruning_core.errors import ConfigError
from pruning_core.models import LoadedModel

HEAD_MODES = ("query", "group")
UNIT_KINDS = ("heads", "channels", "layers")


@dataclass(frozen=True)
class LayerLayout:
    """Where a layer's structured units live, by module kind (see the module docstring).

    style: "llama", "opt" or "gpt2". q/k/v: kinds whose rows are query/key/value features (for GPT-2 all
    three are the fused kind "qkv", whose rows are [q | k | v] blocks of `hidden` each). o: the attention
    consumer kind. mlp_producers: kinds whose rows are MLP channels; mlp_consumer: the kind whose columns are.
    heads / kv_heads / head_dim: query heads, key/value heads, features per head (of the dense model).
    intermediate: MLP channels of the dense model. hidden: the model's hidden size.
    """

    style: str
    q: str
    k: str
    v: str
    o: str
    mlp_producers: tuple[str, ...]
    mlp_consumer: str
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    hidden: int

    @property
    def group_size(self) -> int:
        """Query heads per key/value group."""
        return self.heads // self.kv_heads

    @property
    def is_gqa(self) -> bool:
        return self.kv_heads < self.heads

    @property
    def fused_qkv(self) -> bool:
        return self.q == self.k == self.v

    def head_units(self, mode: str) -> int:
        """Number of head units of a layer in `mode` (query heads, or key/value groups)."""
        return self.heads if (mode == "query" and self.is_gqa) else self.kv_heads

    def head_unit_queries(self, unit: int, mode: str) -> list[int]:
        """Query heads that leave with head unit `unit`."""
        if mode == "query" and self.is_gqa:
            return [unit]
        return list(range(unit * self.group_size, (unit + 1) * self.group_size))

    def head_unit_kv(self, unit: int, mode: str) -> Optional[int]:
        """The key/value head that leaves with head unit `unit`, or None (query mode under GQA)."""
        if mode == "query" and self.is_gqa:
            return None
        return unit

    def head_unit_columns(self, unit: int, mode: str) -> list[int]:
        """Input features of the attention consumer (o) that belong to head unit `unit`."""
        d = self.head_dim
        return [c for h in self.head_unit_queries(unit, mode) for c in range(h * d, (h + 1) * d)]


def _config(loaded: LoadedModel):
    config = loaded.model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def layout_for(loaded: LoadedModel) -> LayerLayout:
    """The structured layout of `loaded`'s decoder layers; ConfigError for layer shapes not handled here."""
    kinds = set(loaded.adapter.module_kinds)
    config = _config(loaded)
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0))
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // max(heads, 1))
    layer0 = loaded.adapter.decoder_layers(loaded.model)[0]
    linears = loaded.adapter.layer_linears(layer0)
    from pruning_core.models import weight_matrix

    if {"q", "k", "v", "o", "gate", "up", "down"} <= kinds:
        style, q, k, v, o, producers, consumer = "llama", "q", "k", "v", "o", ("gate", "up"), "down"
    elif {"q", "k", "v", "o", "fc1", "fc2"} <= kinds:
        style, q, k, v, o, producers, consumer = "opt", "q", "k", "v", "o", ("fc1",), "fc2"
    elif loaded.adapter.family == "gpt2" and {"qkv", "o", "fc", "proj"} <= kinds:
        style, q, k, v, o, producers, consumer = "gpt2", "qkv", "qkv", "qkv", "o", ("fc",), "proj"
    else:
        raise ConfigError(f"Structured pruning knows Llama-, OPT- and GPT-2-shaped layers; this "
                          f"'{loaded.adapter.family}' model's linears are {', '.join(loaded.adapter.module_kinds)}. "
                          "Choose unstructured pruning for it.")
    intermediate = int(weight_matrix(linears[consumer]).shape[1])
    if heads <= 0 or heads % kv_heads:
        raise ConfigError(f"The model's config has {heads} attention heads and {kv_heads} key/value heads, which "
                          "does not describe whole key/value groups; structured head pruning cannot apply.")
    return LayerLayout(style, q, k, v, o, producers, consumer, heads, kv_heads, head_dim, intermediate, hidden)


# ------------------------------------------------------------------------------------------ current widths

@dataclass(frozen=True)
class LayerWidths:
    """The widths of one (possibly already sliced) decoder layer: query heads, key/value heads, MLP channels."""

    heads: int
    kv_heads: int
    channels: int

    def to_dict(self) -> dict:
        return {"heads": self.heads, "kv_heads": self.kv_heads, "channels": self.channels}


def layer_parameters(layer: torch.nn.Module) -> int:
    """Parameters of one decoder layer (real tensor elements, biases and norms included)."""
    return sum(p.numel() for p in layer.parameters())


def decoder_parameters(loaded: LoadedModel) -> int:
    """Parameters of all decoder layers (what the structured ratio is counted over)."""
    return sum(layer_parameters(layer) for layer in loaded.adapter.decoder_layers(loaded.model))


def model_parameters(loaded: LoadedModel) -> int:
    """Parameters of the whole model, embeddings and LM head included (tied tensors counted once)."""
    return sum(p.numel() for p in loaded.model.parameters())


def _rows(module: torch.nn.Module) -> int:
    from pruning_core.models import weight_matrix

    return int(weight_matrix(module).shape[0])


def unit_cost(layout: LayerLayout, linears: dict, unit: str, mode: str = "query") -> int:
    """Parameters one unit of kind `unit` ("heads" or "channels") removes from a layer (weights + biases).

    linears: the layer's kind -> module (biases are read from them).
    """
    def bias(kind: str) -> bool:
        return getattr(linears[kind], "bias", None) is not None

    h = layout.hidden
    if unit == "channels":
        cost = sum(h + (1 if bias(kind) else 0) for kind in layout.mlp_producers)
        return cost + h  # the consumer's column (its bias is per output, it stays)
    if unit != "heads":
        raise ConfigError(f"Unit '{unit}' has no per-layer cost; use 'heads' or 'channels'.")
    d = layout.head_dim
    queries = len(layout.head_unit_queries(0, mode))
    kv = 0 if layout.head_unit_kv(0, mode) is None else 1
    per_row_q = h + (1 if bias(layout.q) else 0)
    per_row_kv = h + (1 if bias(layout.k) else 0)  # k and v share the bias setting in every family here
    return queries * d * per_row_q + 2 * kv * d * per_row_kv + queries * d * h


def producer_rows(layout: LayerLayout, unit_kind: str, unit: int, mode: str = "query") -> dict[str, list[int]]:
    """kind -> rows (of the (out, in) weight view) that leave with one unit ("heads" or "channels").

    For GPT-2's fused qkv the q, k and v rows are blocks of `hidden` rows each, in that order.
    """
    if unit_kind == "channels":
        return {kind: [unit] for kind in layout.mlp_producers}
    d = layout.head_dim
    out: dict[str, list[int]] = {}
    q_offset, k_offset, v_offset = (0, layout.hidden, 2 * layout.hidden) if layout.fused_qkv else (0, 0, 0)
    q_rows = [q_offset + c for h in layout.head_unit_queries(unit, mode) for c in range(h * d, (h + 1) * d)]
    out.setdefault(layout.q, []).extend(q_rows)
    kv = layout.head_unit_kv(unit, mode)
    if kv is not None:
        out.setdefault(layout.k, []).extend(k_offset + c for c in range(kv * d, (kv + 1) * d))
        out.setdefault(layout.v, []).extend(v_offset + c for c in range(kv * d, (kv + 1) * d))
    return out


def consumer_columns(layout: LayerLayout, unit_kind: str, unit: int, mode: str = "query") -> list[int]:
    """Input features of the consumer linear (o or the MLP's down projection) that belong to one unit."""
    return [unit] if unit_kind == "channels" else layout.head_unit_columns(unit, mode)


def unit_count(layout: LayerLayout, unit_kind: str, mode: str = "query") -> int:
    """Units of kind `unit_kind` in one dense layer."""
    return layout.intermediate if unit_kind == "channels" else layout.head_units(mode)


def consumer_kind(layout: LayerLayout, unit_kind: str) -> str:
    """The kind of the linear that consumes `unit_kind`'s features."""
    return layout.mlp_consumer if unit_kind == "channels" else layout.o

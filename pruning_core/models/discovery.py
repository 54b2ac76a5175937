"""Generic discovery of a causal LM's decoder layers, prunable linears and final norm, from the module tree.

Any decoder-only Hugging Face causal LM is walked the same way, so a new family needs no code:
- **decoder layers**: the ModuleList of blocks of one class that contain prunable linears; when several
  qualify (an MoE layer's experts are also a ModuleList), the one whose length equals the config's
  ``num_hidden_layers`` wins, then the longest, then the shallowest.
- **prunable linears**: every ``nn.Linear`` (subclasses included, e.g. Falcon's ``FalconLinear``) and every
  transformers ``Conv1D`` inside one layer; embeddings and the LM head live outside the layers and so are
  never pruned. They are ordered as layer 0's forward pass calls them (a one-layer trace on a few tokens);
  a linear the trace does not reach follows in registration order.
- **module kinds**: a short stable name per linear, derived from its path inside the layer: the last path
  component without a ``_proj`` suffix (``self_attn.q_proj`` -> ``q``, ``mlp.gate_up_proj`` -> ``gate_up``),
  with a few well-known long names shortened (``query_key_value`` -> ``qkv``, ``dense_h_to_4h`` -> ``h_to_4h``);
  names that would collide inside a layer use their whole path joined by ``_``. Fused projections therefore
  stay their own kinds (Phi-3 ``qkv``/``gate_up``, GPT-NeoX and Falcon ``qkv``/``h_to_4h``).
- **final norm**: the norm modules registered after the layers in their parent (``model.norm``,
  ``gpt_neox.final_layer_norm``, ``transformer.ln_f``), else the parent's other non-embedding norms, i.e.
  what maps the last layer's output to the LM head's input.

Encoder-only (BERT-like) and encoder-decoder (T5-like) models are refused with one sentence by
`check_decoder_only`, before weights are loaded where the config is read first.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from pruning_core.errors import ModelLoadError

# Long leaf names shortened to the names users read in papers and heatmaps.
_KIND_ALIASES = {
    "query_key_value": "qkv",
    "dense_h_to_4h": "h_to_4h",
    "dense_4h_to_h": "4h_to_h",
}
_TRACE_TOKENS = 8  # tokens in the one-layer trace that orders the linears (a cost of milliseconds to seconds)

DECODER_ONLY_HINT = ("PruneScope prunes decoder-only causal language models (such as Llama, Mistral, Qwen, "
                     "Gemma, Phi-3, GPT-2, Pythia, Falcon, StableLM or OLMo), so choose one of those")


class _TraceDone(Exception):
    """Raised inside the trace once layer 0 has run, so the rest of the model is skipped."""


# ------------------------------------------------------------------------------------------ refusals

def check_decoder_only(config) -> None:
    """Raise ModelLoadError (one sentence) when `config` describes an encoder-only or encoder-decoder model.

    Encoder-decoder: ``config.is_encoder_decoder`` (T5, BART...). Encoder-only: a family that transformers
    maps to a masked-LM head (BERT, RoBERTa, DeBERTa...), even when configured with ``is_decoder=True``:
    its blocks are built for bidirectional attention, not for the causal-LM protocol measured here.
    """
    if config is None:
        return
    model_type = getattr(config, "model_type", None) or type(config).__name__
    if getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(f"'{model_type}' is an encoder-decoder model, but {DECODER_ONLY_HINT}.")
    if model_type in _masked_lm_types():
        raise ModelLoadError(f"'{model_type}' is an encoder-only (masked language) model, but {DECODER_ONLY_HINT}.")


def _masked_lm_types() -> frozenset:
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
    except ImportError:  # a transformers without the mapping: fall back to the common encoder families
        return frozenset({"bert", "roberta", "deberta", "deberta-v2", "distilbert", "albert", "electra",
                          "xlm-roberta", "modernbert"})
    return frozenset(MODEL_FOR_MASKED_LM_MAPPING_NAMES)


# ------------------------------------------------------------------------------------------ structure

def is_prunable_linear(module: nn.Module) -> bool:
    """True for nn.Linear (and subclasses) and transformers' Conv1D (GPT-2 style, weight stored (in, out))."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _config_layer_count(config) -> Optional[int]:
    if config is None:
        return None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(text_config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def find_layers_path(model: nn.Module) -> str:
    """Dotted path of the ModuleList of decoder layers (see the module docstring for the rule)."""
    candidates = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0 or not name:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        if not any(is_prunable_linear(m) for m in module[0].modules()):
            continue
        candidates.append((name, len(module)))
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if not candidates:
        raise ModelLoadError(f"No decoder layers (a list of identical blocks holding linear layers) were found in "
                             f"the '{model_type}' model, so it cannot be pruned here; {DECODER_ONLY_HINT}.")
    expected = _config_layer_count(getattr(model, "config", None))
    matching = [c for c in candidates if c[1] == expected] or candidates
    # Longest first, then shallowest (an outer list beats one nested inside its blocks), then first found.
    best = min(enumerate(matching), key=lambda ic: (-ic[1][1], ic[1][0].count("."), ic[0]))[1]
    return best[0]


def kind_names(paths: list[str]) -> dict[str, str]:
    """path inside a layer -> short stable kind name (unique within the layer)."""

    def short(path: str) -> str:
        leaf = path.rsplit(".", 1)[-1]
        leaf = _KIND_ALIASES.get(leaf, leaf)
        if leaf.endswith("_proj") and len(leaf) > len("_proj"):
            leaf = leaf[: -len("_proj")]
        return leaf

    shorts = {path: short(path) for path in paths}
    counts: dict[str, int] = {}
    for name in shorts.values():
        counts[name] = counts.get(name, 0) + 1
    return {path: (name if counts[name] == 1 else path.replace(".", "_")) for path, name in shorts.items()}


def find_linears(model: nn.Module, layers_path: str) -> dict[str, str]:
    """kind -> path inside a layer, for every prunable linear of the decoder layers, in forward order.

    Every layer must hold the same linear paths (one set of kinds per layer); a model whose layers differ
    (hybrid stacks) is refused with a message.
    """
    layers = model.get_submodule(layers_path)
    paths = [name for name, m in layers[0].named_modules() if name and is_prunable_linear(m)]
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    for index, layer in enumerate(layers):
        other = [name for name, m in layer.named_modules() if name and is_prunable_linear(m)]
        if other != paths:
            raise ModelLoadError(f"Decoder layer {index} of the '{model_type}' model holds other linear modules than "
                                 "layer 0 (a hybrid stack), which PruneScope cannot prune yet; choose a model whose "
                                 "layers are all alike.")
    order = _forward_order(model, layers[0], paths)
    names = kind_names(paths)
    return {names[path]: path for path in order}


def _forward_order(model: nn.Module, layer0: nn.Module, paths: list[str]) -> list[str]:
    """`paths` in the order layer 0's forward calls them; registration order where the trace cannot tell."""
    called: list[str] = []
    handles = []

    def record(path):
        def hook(module, args):  # noqa: ARG001 - torch hook signature
            if path not in called:
                called.append(path)
        return hook

    def stop(module, args, output):  # noqa: ARG001
        raise _TraceDone

    try:
        for path in paths:
            handles.append(layer0.get_submodule(path).register_forward_pre_hook(record(path)))
        handles.append(layer0.register_forward_hook(stop))
        param = next(model.parameters())
        if param.device.type == "meta":
            return list(paths)
        vocab = getattr(getattr(model, "config", None), "vocab_size", None) or 2
        ids = (torch.arange(_TRACE_TOKENS, device=param.device) % max(int(vocab), 1)).unsqueeze(0)
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)
    except _TraceDone:
        pass
    except Exception:  # noqa: BLE001 - the trace only orders; any failure falls back to registration order
        return list(paths)
    finally:
        for handle in handles:
            handle.remove()
    return called + [p for p in paths if p not in called]


def find_final_norm_paths(model: nn.Module, layers_path: str) -> tuple[str, ...]:
    """Paths of the norm modules between the last layer's output and the LM head, in the layers' parent.

    The norms registered after the layers (``model.norm``, ``transformer.ln_f``); when none is (OPT registers
    ``final_layer_norm`` before its layers), every norm of the parent whose name does not say "emb"
    (an embedding norm such as BLOOM's ``word_embeddings_layernorm`` runs before the layers).
    """
    parent_path, _, layers_name = layers_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    after, anywhere, seen_layers = [], [], False
    for name, child in parent.named_children():
        if name == layers_name:
            seen_layers = True
            continue
        if child is None or "norm" not in type(child).__name__.lower():
            continue
        path = f"{parent_path}.{name}" if parent_path else name
        if seen_layers:
            after.append(path)
        elif "emb" not in name.lower():
            anywhere.append(path)
    return tuple(after or anywhere)

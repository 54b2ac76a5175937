"""Models of real shapes with random weights: scale runs without downloading anything.

`load_model("random:tinyllama-1.1b")` builds a Llama-architecture model with the published configuration of
TinyLlama-1.1B (hidden size, MLP width, layers, heads, KV heads, RoPE, tied embeddings: copied below from each
model's config.json) and deterministic random weights, with the embedded model's tokenizer. Its perplexities mean
nothing; its time and memory per layer, per token and per parameter are those of the real model.

Vocabulary: the model gets max(published vocabulary, the tokenizer's 49,152 entries). Llama-3.2-3B keeps its
128,256 rows (the embedding and the LM head cost what they really cost; only ids the tokenizer produces are ever
fed, all below 49,152). TinyLlama's 32,000 rows are widened to 49,152, because the embedded tokenizer produces ids
up to 49,151 and an id outside the embedding would crash; that adds 70 M parameters to its embedding and head
(1.17 B in all instead of 1.10 B) and leaves every decoder layer, what pruning walks and times, exactly as
published.

Memory: the model is built on the meta device (no storage), given uninitialised storage in the asked dtype with
`to_empty`, then filled tensor by tensor from a seeded generator, so the peak is ~1x the model's bytes in that
dtype (a bf16 model never exists in fp32 first). Nothing is written to disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:
    from pruning_core.models.adapters import LoadedModel

RANDOM_PREFIX = "random:"

#: Standard deviation of the random normal weights: the `initializer_range` of every config below.
INIT_STD = 0.02


@dataclass(frozen=True)
class PublishedShape:
    """The architecture fields of a published config.json that decide a model's size and cost (LlamaConfig)."""

    hub_id: str  # where the numbers come from (never downloaded)
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    rope_theta: float
    tie_word_embeddings: bool
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    head_dim: Optional[int] = None
    rope_scaling: Optional[tuple] = None  # (("key", value), ...): hashable for the frozen dataclass


#: Published configurations, copied from each model's config.json on the Hugging Face hub.
SHAPES: dict[str, PublishedShape] = {
    "smollm2-135m": PublishedShape("HuggingFaceTB/SmolLM2-135M", 576, 1536, 30, 9, 3, 49152, 100000.0, True, 8192),
    "smollm2-360m": PublishedShape("HuggingFaceTB/SmolLM2-360M", 960, 2560, 32, 15, 5, 49152, 100000.0, True, 8192),
    "tinyllama-1.1b": PublishedShape("TinyLlama/TinyLlama-1.1B-Chat-v1.0", 2048, 5632, 22, 32, 4, 32000, 10000.0,
                                     False, 2048),
    "llama-3.2-3b": PublishedShape("meta-llama/Llama-3.2-3B", 3072, 8192, 28, 24, 8, 128256, 500000.0, True, 131072,
                                   head_dim=128,
                                   rope_scaling=(("factor", 32.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
                                                 ("original_max_position_embeddings", 8192),
                                                 ("rope_type", "llama3"))),
}


def random_config(shape: str, tokenizer, **overrides):
    """The `LlamaConfig` of a published shape with the vocabulary widened to `tokenizer` (module docstring).

    overrides: config fields to change (tests use a few layers, e.g. num_hidden_layers=2).
    """
    import transformers

    from pruning_core.errors import ModelLoadError

    if shape not in SHAPES:
        raise ModelLoadError(f"No random model shape '{shape}'; choose one of "
                             f"{', '.join(RANDOM_PREFIX + name for name in SHAPES)}.")
    published = SHAPES[shape]
    fields = {k: v for k, v in published.__dict__.items() if k not in ("hub_id", "head_dim", "rope_scaling")}
    fields["vocab_size"] = max(published.vocab_size, len(tokenizer))
    if published.head_dim is not None:
        fields["head_dim"] = published.head_dim
    if published.rope_scaling is not None:
        fields["rope_scaling"] = dict(published.rope_scaling)
    special = {name: getattr(tokenizer, f"{name}_id", None) for name in ("bos_token", "eos_token", "pad_token")}
    config = transformers.LlamaConfig(**fields, hidden_act="silu", initializer_range=INIT_STD,
                                      attention_bias=False, mlp_bias=False, use_cache=False,
                                      **{f"{k}_id": v for k, v in special.items() if v is not None})
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def build_random_model(config, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    """A `LlamaForCausalLM` of `config` with seeded random weights in `dtype`, peak memory ~1x its bytes.

    Linear and embedding weights ~ N(0, INIT_STD^2), norm weights 1 (as transformers' own initialisation draws
    them), filled in parameter order from one `torch.Generator(seed)`: the same config, dtype and seed give the
    same weights in every process (Ray workers check this through the weight fingerprint).
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.to_empty(device="cpu")  # uninitialised storage in `dtype`
    model.tie_weights()  # to_empty gave the LM head its own storage; share the embedding's again
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():  # a tied weight is listed (and filled) once
            if name.endswith("norm.weight") or parameter.ndim == 1 and "norm" in name:
                parameter.fill_(1.0)
            elif parameter.ndim == 1:  # biases (none in these configs, kept for safety)
                parameter.zero_()
            else:
                parameter.normal_(0.0, INIT_STD, generator=generator)
        _reset_rotary_buffers(model)
    model.eval()
    model.config.use_cache = False
    return model


def _reset_rotary_buffers(model: torch.nn.Module) -> None:
    """Rebuild the rotary embeddings' inverse frequencies, which `to_empty` left uninitialised: they are
    non-persistent buffers computed in the module's constructor (fp32, whatever the model's dtype), so a fresh
    module of the same class and config on the CPU gives them exactly as a normal load would."""
    for module in model.modules():
        if type(module).__name__.endswith("RotaryEmbedding") and hasattr(module, "inv_freq"):
            fresh = type(module)(config=module.config)
            for name, buffer in fresh.named_buffers(recurse=False):
                setattr(module, name, buffer)
            if hasattr(fresh, "attention_scaling"):
                module.attention_scaling = fresh.attention_scaling


def random_model(shape: str, tokenizer, dtype: torch.dtype = torch.float32, seed: int = 0,
                 **overrides) -> "LoadedModel":
    """`random:<shape>` as a LoadedModel (see `build_random_model`); the tokenizer is the caller's (the
    embedded model's, in `load_model`)."""
    from pruning_core.models.adapters import LoadedModel, adapter_for

    model = build_random_model(random_config(shape, tokenizer, **overrides), dtype, seed)
    name = RANDOM_PREFIX + shape
    return LoadedModel(model, tokenizer, name, name, adapter_for(model))

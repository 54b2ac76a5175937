"""Which llama.cpp architecture a model is written as, and the hyperparameters llama.cpp reads from the file.

PruneScope writes the llama family (Hugging Face `model_type` llama or mistral without a sliding window; in
llama.cpp both are the `llama` architecture). A model whose decoder layers have different widths (a structured
model pruned per layer) is written as llama.cpp's `deci` architecture: the same llama block, but with
`feed_forward_length`, `attention.head_count` and `attention.head_count_kv` as one value per layer (written by
llama.cpp for Nemotron-51B; its loader reads head counts and FFN widths per layer). Widths are read from the tensors,
never from the config, because a structured folder keeps the dense widths in its standard config fields.

Refused in one sentence: another family (naming whether llama.cpp runs it at all, from the `gguf` package's
architecture list), rope scaling other than plain rope, a sliding window, and a layer left with no attention heads
or no MLP channels (llama.cpp's `deci` graph reads the head size from layer 0 and skips the residual of a layer
without an MLP).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gguf

from pruning_core.errors import ConfigError
from pruning_core.models import LoadedModel, weight_matrix

#: Hugging Face model types PruneScope writes as llama.cpp's llama block.
LLAMA_FAMILY = ("llama", "mistral")


@dataclass(frozen=True)
class LayerShape:
    """One decoder layer's widths as llama.cpp reads them: query heads, key/value heads, MLP channels."""

    heads: int
    kv_heads: int
    channels: int

    def to_dict(self) -> dict:
        return {"heads": self.heads, "kv_heads": self.kv_heads, "channels": self.channels}


@dataclass(frozen=True)
class GgufArchitecture:
    """What the GGUF file says about the model.

    name: llama.cpp architecture ("llama", or "deci" for per-layer widths); layers: widths per decoder layer;
    head_dim: size of one attention head (values); hidden: embedding length; vocab: embedding rows (tokens);
    context: trained context length (tokens); rope_theta: rope frequency base; rms_eps: RMSNorm epsilon;
    tied: whether the output layer is the token embedding (then no output tensor is written).
    """

    name: str
    layers: tuple[LayerShape, ...]
    head_dim: int
    hidden: int
    vocab: int
    context: int
    rope_theta: float
    rms_eps: float
    tied: bool
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def uniform(self) -> bool:
        return len(set(self.layers)) <= 1

    def to_dict(self) -> dict:
        return {"name": self.name, "layers": [w.to_dict() for w in self.layers], "head_dim": self.head_dim,
                "hidden": self.hidden, "vocab": self.vocab, "context": self.context, "rope_theta": self.rope_theta,
                "rms_eps": self.rms_eps, "tied": self.tied, "uniform": self.uniform, "notes": list(self.notes)}


def _known_to_llama_cpp(model_type: str) -> bool:
    names = {n.replace("_", "").replace("-", "") for n in gguf.MODEL_ARCH_NAMES.values()}
    return model_type.replace("_", "").replace("-", "") in names


def check_family(loaded: LoadedModel) -> str:
    """The model's Hugging Face model type, or ConfigError in one sentence when PruneScope does not write it."""
    model_type = str(getattr(loaded.model.config, "model_type", "") or loaded.adapter.family)
    if model_type in LLAMA_FAMILY:
        return model_type
    if _known_to_llama_cpp(model_type):
        raise ConfigError(f"llama.cpp runs '{model_type}' models, but PruneScope's GGUF export writes only the llama "
                          f"family ({', '.join(LLAMA_FAMILY)}); convert this one with llama.cpp's "
                          "convert_hf_to_gguf.py.")
    raise ConfigError(f"'{model_type}' is not a model family llama.cpp runs, so it has no GGUF form; export it as "
                      "safetensors instead.")


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = (params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default")
    if kind != "default":
        raise ConfigError(f"The model uses '{kind}' rope scaling, which PruneScope's GGUF export does not write yet; "
                          "convert it with llama.cpp's convert_hf_to_gguf.py.")
    return float(params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)


def layer_shapes(loaded: LoadedModel, head_dim: int) -> tuple[LayerShape, ...]:
    """Widths of every decoder layer, read from its tensors (q/o for query heads, k for key/value heads, down
    for MLP channels)."""
    shapes = []
    for layer in loaded.adapter.decoder_layers(loaded.model):
        linears = loaded.adapter.layer_linears(layer)
        heads = weight_matrix(linears["o"]).shape[1] // head_dim
        kv_heads = weight_matrix(linears["k"]).shape[0] // head_dim
        shapes.append(LayerShape(int(heads), int(kv_heads), int(weight_matrix(linears["down"]).shape[1])))
    return tuple(shapes)


def architecture_for(loaded: LoadedModel) -> GgufArchitecture:
    """The GGUF architecture of a llama-family model as it is in memory (dense, structurally pruned, layers
    dropped); ConfigError in one sentence for what llama.cpp cannot run from this export."""
    check_family(loaded)
    config = loaded.model.config
    window = getattr(config, "sliding_window", None)
    context = int(getattr(config, "max_position_embeddings", 0) or 0)
    if window is not None and window < context:
        raise ConfigError(f"The model attends within a sliding window of {window} tokens, which llama.cpp's llama "
                          "block does not; export it with a window of at least its context length.")
    hidden = int(config.hidden_size)
    head_dim = int(getattr(config, "head_dim", None) or hidden // int(config.num_attention_heads))
    layers = layer_shapes(loaded, head_dim)
    if not layers:
        raise ConfigError("The model has no decoder layers left; keep at least one.")
    for index, shape in enumerate(layers):
        if shape.heads == 0 or shape.kv_heads == 0 or shape.channels == 0:
            raise ConfigError(f"Decoder layer {index} has {shape.heads} attention heads and {shape.channels} MLP "
                              "channels left; llama.cpp needs both in every layer, so remove the whole layer instead.")
        if shape.heads % shape.kv_heads:
            raise ConfigError(f"Decoder layer {index} has {shape.heads} query heads for {shape.kv_heads} key/value "
                              "heads, which llama.cpp cannot group; prune heads in whole key/value groups.")
    embedding = loaded.model.get_input_embeddings().weight
    output = loaded.model.get_output_embeddings()
    tied = output is None or output.weight.data_ptr() == embedding.data_ptr()
    uniform = len(set(layers)) == 1
    notes = () if uniform else (
        "The decoder layers have different widths, so the file uses llama.cpp's 'deci' architecture (the llama "
        "block with head counts and feed-forward length per layer).",)
    return GgufArchitecture(name="llama" if uniform else "deci", layers=layers, head_dim=head_dim, hidden=hidden,
                            vocab=int(embedding.shape[0]), context=context, rope_theta=_rope_theta(config),
                            rms_eps=float(getattr(config, "rms_norm_eps", 1e-6)), tied=bool(tied), notes=notes)


def write_hyperparameters(writer: gguf.GGUFWriter, arch: GgufArchitecture) -> None:
    """The `<arch>.*` keys llama.cpp reads: one value where the layers agree, one per layer where they differ."""
    def per_layer(values: list[int]):
        return values[0] if arch.uniform else values

    writer.add_context_length(arch.context)
    writer.add_embedding_length(arch.hidden)
    writer.add_block_count(len(arch.layers))
    writer.add_feed_forward_length(per_layer([w.channels for w in arch.layers]))
    writer.add_head_count(per_layer([w.heads for w in arch.layers]))
    writer.add_head_count_kv(per_layer([w.kv_heads for w in arch.layers]))
    # Written always: llama.cpp otherwise derives the head size as hidden / heads of layer 0, wrong once heads go.
    writer.add_key_length(arch.head_dim)
    writer.add_value_length(arch.head_dim)
    writer.add_rope_dimension_count(arch.head_dim)
    writer.add_rope_freq_base(arch.rope_theta)
    writer.add_layer_norm_rms_eps(arch.rms_eps)
    writer.add_vocab_size(arch.vocab)

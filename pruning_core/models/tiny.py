"""Tiny random models and a tiny tokenizer, for tests and instant demos (offline, well under a second).

`load_model("tiny-llama")` (also tiny-opt, tiny-gpt2, tiny-mistral, tiny-qwen2, and tiny-gpt_neox, tiny-phi3,
tiny-gemma, tiny-falcon, tiny-stablelm, tiny-olmo, whose adapters are discovered) gives a deterministic random
model of that family with the tokenizer below, so every code path, workers included, can run without the
embedded model. Its perplexities mean nothing about pruning quality.

The tokenizer: unit tests run on tiny random models and must not depend on the embedded SmolLM2 model or on the network, but
they still need a real `transformers` tokenizer: one that encodes *any* string (byte-level, so no unknown
tokens), decodes back, and has bos/eos/pad tokens like a causal LM's tokenizer. `build_test_tokenizer` trains
such a tokenizer with the `tokenizers` library on a few paragraphs of built-in text (English prose and a bit
of Python) and wraps it in `transformers.PreTrainedTokenizerFast`.

The result is cached per argument tuple and therefore shared between tests: do not mutate it (set
`model_max_length` through the argument instead).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

if TYPE_CHECKING:
    from pruning_core.models.adapters import LoadedModel

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)

# Byte-level BPE starts from the 256 byte symbols; the specials come on top, and the rest are merges.
_MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)

_TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. A language model predicts the next token from the ones before it,
and its perplexity is the exponential of the mean negative log-likelihood per token. Pruning removes weights
from the linear layers of a network; with fifty percent sparsity, half of the weights of every matrix are zero.

Magnitude pruning keeps the largest weights. Wanda scales each weight by the norm of its input activation and
ranks the scores within each output row. SparseGPT solves a layer-wise reconstruction problem with the inverse
Hessian and updates the weights that remain, block by block, so that the layer output changes as little as
possible. In the two-to-four pattern, every group of four consecutive weights keeps at most two.

Anarchism is a political philosophy. Alabama is a state in the southeastern region of the United States.
Aristotle was a Greek philosopher and polymath. The ampere is the base unit of electric current.
Hundreds of people have been forced to vacate their homes as strong winds pushed a bushfire towards the town.

def perplexity(model, windows):
    total, count = 0.0, 0
    for window in windows:
        loss = model(window, labels=window).loss
        total += float(loss) * (len(window) - 1)
        count += len(window) - 1
    return math.exp(total / count)

Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 and symbols ( ) [ ] { } < > = + - * / % : ; , . ! ? ' " # @ & | ~ ^ _
"""


def build_test_tokenizer(
    vocab_size: int = 300, model_max_length: int | None = None
) -> transformers.PreTrainedTokenizerFast:
    """Return a byte-level BPE tokenizer with `vocab_size` entries (bytes + specials + merges).

    vocab_size: total vocabulary size in tokens, at least 259 (256 bytes and 3 special tokens).
    model_max_length: the tokenizer's nominal maximum sequence length in tokens; None = no limit (transformers'
        very large default). Set it small to exercise the "sequence longer than the maximum" warning.
    Special tokens: bos `<|bos|>`, eos `<|eos|>`, pad `<|pad|>`; no special token is added on encode.
    Deterministic: the same arguments give the same vocabulary. Cached and shared: do not mutate the result.
    """
    if vocab_size < _MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be at least {_MIN_VOCAB_SIZE} (256 bytes + 3 special tokens), got {vocab_size}"
        )
    # Normalised arguments, so that build_test_tokenizer() and build_test_tokenizer(300) share one object.
    return _build_cached(int(vocab_size), None if model_max_length is None else int(model_max_length))


@functools.lru_cache(maxsize=8)
def _build_cached(vocab_size: int, model_max_length: int | None) -> transformers.PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_TRAINING_TEXT.split("\n\n"), trainer=trainer)
    kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        **kwargs,
    )



# Families with a tiny config. The first five have explicit adapters; the rest are found by generic discovery
# (GPT-NeoX = Pythia, Phi-3 with fused qkv/gate_up projections, Gemma, Falcon, StableLM, OLMo).
TINY_FAMILIES = ("llama", "mistral", "qwen2", "opt", "gpt2", "gpt_neox", "phi3", "gemma", "falcon", "stablelm", "olmo")


def tiny_config(family: str = "llama", vocab_size: int = 300, layers: int = 2, hidden: int = 64, **overrides):
    """A small config of a supported family for tests and demos (random weights, well under a second to build).

    hidden: hidden size (4 attention heads, so head size hidden / 4); layers: decoder layers; overrides: any
    other config attribute (e.g. ``alibi=True`` for Falcon). Token ids follow `build_test_tokenizer`
    (bos 0, eos 1, pad 2) for the families whose defaults would point outside the tiny vocabulary.
    """
    import transformers

    common = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4)
    # Llama-like configs share their argument names; Gemma's default head_dim (256) must follow the hidden size.
    llama_like = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config",
                  "phi3": "Phi3Config", "gemma": "GemmaConfig", "stablelm": "StableLmConfig", "olmo": "OlmoConfig"}
    if family in llama_like:
        extra = dict(intermediate_size=hidden * 2, num_key_value_heads=2, max_position_embeddings=512,
                     tie_word_embeddings=True)
        if family in ("phi3", "gemma", "stablelm", "olmo"):
            extra.update(bos_token_id=0, eos_token_id=1, pad_token_id=2)
        if family == "gemma":
            extra["head_dim"] = hidden // 4
        config = getattr(transformers, llama_like[family])(**common, **extra)
    elif family == "opt":
        config = transformers.OPTConfig(**common, ffn_dim=hidden * 2, max_position_embeddings=512,
                                        word_embed_proj_dim=hidden)
    elif family == "gpt2":
        config = transformers.GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=4,
                                         n_positions=512, bos_token_id=0, eos_token_id=0)
    elif family == "gpt_neox":
        config = transformers.GPTNeoXConfig(**common, intermediate_size=hidden * 4, max_position_embeddings=512,
                                            bos_token_id=0, eos_token_id=1)
    elif family == "falcon":
        config = transformers.FalconConfig(**common, bos_token_id=0, eos_token_id=1)
    else:
        from pruning_core.errors import ModelLoadError

        raise ModelLoadError(f"No tiny config for '{family}'; choose one of {', '.join(TINY_FAMILIES)}.")
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def tiny_model(family: str = "llama", tokenizer=None, seed: int = 0, **config_kwargs) -> "LoadedModel":
    """A randomly initialised model of a supported family wrapped as a LoadedModel (tests, demos).

    tokenizer: defaults to `build_test_tokenizer()`; the vocabulary size follows it.
    """
    from transformers import AutoModelForCausalLM

    from pruning_core.models.adapters import LoadedModel, adapter_for

    tokenizer = tokenizer if tokenizer is not None else build_test_tokenizer()
    torch.manual_seed(seed)
    config_kwargs.pop("vocab_size", None)
    vocab = len(tokenizer)
    config = tiny_config(family, vocab_size=vocab, **config_kwargs)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.config.use_cache = False
    return LoadedModel(model, tokenizer, f"tiny-{family}", f"tiny-{family}", adapter_for(model))

"""The tokenizer part of a GGUF file (`tokenizer.ggml.*`): llama.cpp tokenizes and detokenizes with it.

Two sources, tried in this order:
1. A GGUF file whose token list is exactly the model's vocabulary (the model's own source file, or the embedded
   SmolLM2 file for the embedded model and every model pruned from it): its tokenizer keys are carried over as
   they are (token list, types, merges, the pre-tokenizer name llama.cpp chose, special ids, chat template).
2. The Hugging Face tokenizer, built as llama.cpp's converter builds it, with the `gguf` package's vocabulary
   readers: a byte-level BPE (GPT-2 style: `tokenizer.ggml.model` gpt2) with its merges; special tokens (bos, eos,
   unk, pad) from the tokenizer, and whether it adds bos/eos measured by encoding a word. The pre-tokenizer name
   is known only for the plain byte-level pre-tokenizer (llama.cpp's "gpt-2"); any other is refused in one
   sentence, because a wrong name silently splits text differently.
Token rows the embedding has beyond the tokenizer's vocabulary are written as unused `[PAD<i>]` tokens, as the
converter does, so that llama.cpp's vocabulary size matches the embedding.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional

import gguf

from pruning_core.errors import ConfigError
from pruning_core.models import LoadedModel

TOKENIZER_PREFIX = "tokenizer."


def vocabulary_list(tokenizer) -> list[str]:
    """The tokenizer's tokens ordered by id (added tokens included); ConfigError when the ids have gaps."""
    vocab = tokenizer.get_vocab()
    tokens = [None] * len(vocab)
    for token, index in vocab.items():
        if index >= len(tokens):
            raise ConfigError("The tokenizer's token ids are not consecutive, so llama.cpp cannot index them; "
                              "save the tokenizer again with consecutive ids.")
        tokens[index] = token
    return tokens


def _gguf_tokens(path: Path) -> Optional[list[str]]:
    reader = gguf.GGUFReader(str(path))
    field = reader.fields.get("tokenizer.ggml.tokens")
    return None if field is None else list(field.contents())


def candidate_files(loaded: LoadedModel) -> list[Path]:
    """GGUF files whose tokenizer the model may share: its own source file, then the embedded model's file."""
    files = []
    source = Path(str(loaded.source)).expanduser()
    if source.suffix.lower() == ".gguf" and source.is_file():
        files.append(source)
    try:
        from pruning_core.models import embedded_gguf_path

        files.append(embedded_gguf_path())
    except Exception:  # noqa: BLE001 - the embedded package is optional here; the HF path remains
        pass
    return files


def matching_gguf(loaded: LoadedModel, tokens: list[str]) -> Optional[Path]:
    """The first candidate GGUF file whose token list equals `tokens` (the prefix the tokenizer covers), or None."""
    for path in candidate_files(loaded):
        theirs = _gguf_tokens(path)
        if theirs is not None and theirs == tokens:
            return path
    return None


def copy_tokenizer_keys(writer: gguf.GGUFWriter, path: Path) -> list[str]:
    """Copy every `tokenizer.*` key of the GGUF file `path` into `writer`; returns the keys copied."""
    reader = gguf.GGUFReader(str(path))
    copied = []
    for key, field in reader.fields.items():
        if not key.startswith(TOKENIZER_PREFIX):
            continue
        kind = field.types[0]
        sub = field.types[1] if kind == gguf.GGUFValueType.ARRAY and len(field.types) > 1 else None
        writer.add_key_value(key, field.contents(), kind, sub_type=sub)
        copied.append(key)
    return copied


def _pre_tokenizer_name(document: dict) -> str:
    pre = document.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"  # llama.cpp's name for the GPT-2 split (llama-vocab.cpp), not the model name "gpt2"
    described = pre.get("type") or "none"
    raise ConfigError(f"The tokenizer splits text with a '{described}' pre-tokenizer whose llama.cpp name PruneScope "
                      "cannot tell (it knows plain byte-level BPE and the embedded model's); convert this model with "
                      "llama.cpp's convert_hf_to_gguf.py, which recognises it.")


def _adds(tokenizer, token_id: Optional[int], first: bool) -> bool:
    if token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0 if first else -1] == token_id


def write_hf_tokenizer(writer: gguf.GGUFWriter, tokenizer, vocab_rows: int) -> dict:
    """Write a Hugging Face byte-level BPE tokenizer as llama.cpp's gpt2 tokenizer (module docstring)."""
    with tempfile.TemporaryDirectory(prefix="prunescope-tokenizer-") as folder:
        tokenizer.save_pretrained(folder)
        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise ConfigError("The tokenizer has no tokenizer.json (a slow tokenizer); PruneScope writes GGUF "
                              "tokenizers from fast byte-level BPE tokenizers only.")
        document = json.loads(path.read_text(encoding="utf-8"))
        model = document.get("model") or {}
        if model.get("type") != "BPE" or model.get("byte_fallback") or \
                (document.get("decoder") or {}).get("type") != "ByteLevel":
            raise ConfigError(f"The tokenizer is a '{model.get('type')}' model without a byte-level decoder, not the "
                              "byte-level BPE PruneScope writes to GGUF; convert this model with llama.cpp's "
                              "convert_hf_to_gguf.py.")
        pre = _pre_tokenizer_name(document)
        merges = gguf.SpecialVocab(folder, load_merges=True).merges
    tokens = vocabulary_list(tokenizer)
    if len(tokens) > vocab_rows:
        raise ConfigError(f"The tokenizer has {len(tokens)} tokens but the embedding only {vocab_rows} rows; the "
                          "model and tokenizer do not belong together.")
    added = {index: token for index, token in tokenizer.added_tokens_decoder.items()}
    types = []
    for index in range(len(tokens)):
        entry = added.get(index)
        types.append(gguf.TokenType.NORMAL if entry is None else
                     gguf.TokenType.CONTROL if entry.special else gguf.TokenType.USER_DEFINED)
    padding = vocab_rows - len(tokens)
    tokens += [f"[PAD{i}]" for i in range(len(tokens), vocab_rows)]
    types += [gguf.TokenType.UNUSED] * padding
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    specials = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
                "pad": tokenizer.pad_token_id}
    for kind, token_id in specials.items():
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(int(token_id))
    writer.add_add_bos_token(_adds(tokenizer, specials["bos"], first=True))
    writer.add_add_eos_token(_adds(tokenizer, specials["eos"], first=False))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        writer.add_chat_template(template)
    return {"source": "hugging face tokenizer", "model": "gpt2", "pre": pre, "tokens": len(tokens),
            "merges": len(merges), "padding_tokens": padding}


def write_tokenizer(writer: gguf.GGUFWriter, loaded: LoadedModel, vocab_rows: int) -> dict:
    """Write the model's tokenizer keys into `writer` (module docstring); returns where they came from."""
    if loaded.tokenizer is None:
        raise ConfigError("The model has no tokenizer, and llama.cpp needs one in the GGUF file; load the model "
                          "from a folder that holds its tokenizer.")
    tokens = vocabulary_list(loaded.tokenizer)
    match = matching_gguf(loaded, tokens) if len(tokens) == vocab_rows else None
    if match is not None:
        keys = copy_tokenizer_keys(writer, match)
        return {"source": f"carried over from {match.name}", "keys": len(keys), "tokens": len(tokens)}
    return write_hf_tokenizer(writer, loaded.tokenizer, vocab_rows)

"""Models: loaded once per (source, identity) and shared (never mutated), their identity and their facts.

A model is cached with `st.cache_resource` under its source and identity (for a folder or a .gguf file: path,
size and modification time), so a changed file is loaded again; pruning for display goes through jobs, and
generation applies masks in a restoring context manager.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import streamlit as st

from pruning_core import claims
from pruning_core.errors import ModelLoadError, PruneScopeError
from pruning_core.models import classify_source, load_model
from pruning_core.sizes.measure import dense_sixteen_bit_cached, sixteen_bit_size
from pruning_core.store import Store, content_hash


_NOT_A_MODEL = ("'{source}' is not a model PruneScope can read here: give a Hugging Face model folder (with "
                "config.json), a .gguf file, a hub id, or 'embedded'.")


def model_identity(source: str) -> dict:
    """What identifies a model source's weights without loading it: for files and folders, path + size + mtime.

    Raises ModelLoadError (a PruneScopeError) in one sentence for a path that is not a readable model, missing
    or not (the same sentence: the field does not tell what exists on the server).
    """
    try:
        kind = classify_source(source)
    except PruneScopeError:
        raise ModelLoadError(_NOT_A_MODEL.format(source=source)) from None
    identity: dict[str, Any] = {"source": source, "kind": kind}
    if kind == "folder" and not (Path(source).expanduser() / "config.json").is_file():
        # One sentence whether the path is missing or another kind of folder: the field is no way to probe the
        # server's disk, and nothing below an arbitrary folder (/usr) is walked on every rerun.
        raise ModelLoadError(_NOT_A_MODEL.format(source=source))
    if kind in ("folder", "gguf"):
        path = Path(source).expanduser().resolve()
        # A Hugging Face folder keeps its config, weights (shards too) and tokenizer at its top level.
        files = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()]
        identity.update(path=str(path), mtime_ns=max((p.stat().st_mtime_ns for p in files), default=0),
                        size=sum(p.stat().st_size for p in files))
    return identity


def _disk_path(source: str) -> Optional[Path]:
    """The file or folder a model source is read from (the embedded GGUF for 'embedded'); None for hub ids."""
    kind = classify_source(source)
    if kind == "embedded":
        from pruning_core.models import embedded_gguf_path

        return embedded_gguf_path()
    if kind in ("folder", "gguf"):
        return Path(source).expanduser().resolve()
    return None


def disk_bytes(source: str) -> Optional[int]:
    """Bytes on disk of a model source (a folder's files, a .gguf file, the embedded GGUF); None if unknown."""
    try:
        kind = classify_source(source)
        if kind == "embedded":
            return _disk_path(source).stat().st_size
        if kind in ("folder", "gguf"):
            return int(model_identity(source)["size"])
    except (PruneScopeError, OSError):
        return None
    return None


def disk_form(source: str) -> Optional[str]:
    """What the model is stored as on disk ('GGUF Q4_1', 'safetensors, bfloat16'); None if unknown."""
    try:
        path = _disk_path(source)
    except PruneScopeError:
        return None
    return claims.disk_form(path) if path is not None else None


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def _cached_model(source: str, identity_key: str):
    """One shared LoadedModel per (source, identity). Shared across sessions: never mutate it."""
    return load_model(source)


def identity_key(source: str) -> str:
    """A hash of `model_identity(source)`: the part of every cache key that changes when the model file does."""
    return content_hash(model_identity(source))


def get_model(source: str):
    """The loaded model for `source` (cached; reloaded when a file or folder model changes on disk)."""
    return _cached_model(source, identity_key(source))


#: How the Setup page names a model family (its `config.model_type`); others: see `family_label`.
FAMILY_NAMES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma": "Gemma",
                "gemma2": "Gemma 2", "gemma3_text": "Gemma 3", "phi": "Phi", "phi3": "Phi-3",
                "gpt_neox": "GPT-NeoX", "gpt2": "GPT-2", "gptj": "GPT-J", "gpt_bigcode": "GPT-BigCode",
                "opt": "OPT", "falcon": "Falcon", "stablelm": "StableLM", "olmo": "OLMo", "olmo2": "OLMo 2",
                "bloom": "BLOOM", "mpt": "MPT", "granite": "Granite", "smollm3": "SmolLM3"}


def family_label(family: str) -> str:
    """A readable family name ("gpt_neox" -> "GPT-NeoX"); an unlisted one with its underscores as hyphens and
    a capital first letter ("some_model" -> "Some-model")."""
    family = str(family or "")
    if family.lower() in FAMILY_NAMES:
        return FAMILY_NAMES[family.lower()]
    readable = family.replace("_", "-")
    return readable[:1].upper() + readable[1:]


def model_facts(source: str) -> dict:
    """`LoadedModel.describe()` plus `disk_bytes`, `disk_form` (what the file is stored as), the load time (s)
    and `sixteen_bit` (the dense model's 16-bit safetensors measurement, `measured_file_size`; None if unwritable)."""
    loaded = get_model(source)
    facts = dict(loaded.describe())
    facts["disk_bytes"] = disk_bytes(source)
    facts["disk_form"] = disk_form(source)
    facts["load_seconds"] = loaded.load_seconds
    try:  # the dense size a runtime loads, measured on its files (written once per model, then read back)
        facts["sixteen_bit"] = measured_file_size(source)
    except (OSError, PruneScopeError):  # a full or read-only disk, a store in trouble: the other facts still show
        facts["sixteen_bit"] = None
    return facts


def model_size_labels(facts: dict) -> dict:
    """{"disk", "memory", "value_16bit"}: each size of a model with what it is, e.g. "98.4 MB on disk (GGUF
    Q4_1)" and "269.1 MB as 16-bit safetensors (loaded by transformers, vLLM), measured on the saved files"
    (`claims.size_labels`; the last from `facts["sixteen_bit"]`, None when not measured)."""
    return claims.size_labels(facts["parameters"], facts.get("memory_bytes"), facts.get("dtype"),
                              facts.get("disk_bytes"), facts.get("disk_form"), facts.get("sixteen_bit"))


def dense_file_size(fingerprint: Optional[str]) -> Optional[dict]:
    """The dense model's 16-bit safetensors measurement the store holds for weights `fingerprint`, or None (a
    lookup: nothing is written)."""
    return dense_sixteen_bit_cached(Store(), fingerprint)


def measured_file_size(source: str) -> dict:
    """The dense model `source` saved as 16-bit safetensors and measured (`sizes.measure.sixteen_bit_size`): written
    once per model into a temporary folder, then read from the store on every rerun."""
    return sixteen_bit_size(get_model(source), "dense", store=Store())

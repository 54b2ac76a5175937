"""Models: loading (embedded GGUF, local folders and files, hub ids), architecture adapters, tiny test models.

`adapters` finds decoder layers and prunable linears (explicit overrides, else `discovery` from the module
tree); `loading` turns a source string into a `LoadedModel`; `tiny` builds random tiny models for tests.
Import order is one-way: discovery <- adapters <- tiny <- loading.
"""

from pruning_core.models.adapters import (
    ADAPTERS,
    ArchitectureAdapter,
    LoadedModel,
    adapter_for,
    discover_adapter,
    is_transposed,
    to_native,
    weight_fingerprint,
    weight_matrix,
)
from pruning_core.models.loading import (
    EMBEDDED_NAME,
    TINY_PREFIX,
    classify_source,
    default_home,
    embedded_gguf_path,
    load_model,
    model_cache_dir,
)

__all__ = [
    "ADAPTERS", "ArchitectureAdapter", "LoadedModel", "adapter_for", "discover_adapter", "is_transposed", "to_native",
    "weight_fingerprint", "weight_matrix", "EMBEDDED_NAME", "TINY_PREFIX", "classify_source", "default_home",
    "embedded_gguf_path", "load_model", "model_cache_dir",
]

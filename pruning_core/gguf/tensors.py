"""The model's tensors under llama.cpp's names and in llama.cpp's layout.

Names come from the `gguf` package's tensor map (`gguf.get_tensor_name_map`), which knows every Hugging Face name
of the llama block (`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight`).

Layout: Hugging Face's llama rotates the two halves of each head (`rotate_half`: dimension i pairs with
i + head_dim/2), llama.cpp's llama rope rotates neighbouring pairs (2i with 2i+1). The query and key rows of each
head are therefore reordered so that row pair (2i, 2i+1) of the file holds Hugging Face's rows (i, i + head_dim/2);
the product q.k is unchanged, since both sides are reordered alike. `to_llama_cpp_rope` does that and
`from_llama_cpp_rope` undoes it (for reading a file back). Query and key biases are reordered the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import gguf
import numpy as np
import torch

from pruning_core.errors import ConfigError
from pruning_core.gguf.architecture import GgufArchitecture
from pruning_core.models import LoadedModel


@dataclass
class NamedTensor:
    """One tensor to write: llama.cpp name, Hugging Face name, fp32 values (numpy, rows x row length, llama.cpp
    row order) and its role ("embedding", "output" or "other")."""

    name: str
    source: str
    values: np.ndarray
    role: str


def to_llama_cpp_rope(values: np.ndarray, head_dim: int) -> np.ndarray:
    """Reorder the rows of a query or key projection (rows = heads x head_dim, any trailing shape) from Hugging
    Face's half-split rope to llama.cpp's pairwise rope (module docstring)."""
    rest = values.shape[1:]
    return values.reshape(-1, 2, head_dim // 2, *rest).swapaxes(1, 2).reshape(values.shape)


def from_llama_cpp_rope(values: np.ndarray, head_dim: int) -> np.ndarray:
    """Inverse of `to_llama_cpp_rope`."""
    rest = values.shape[1:]
    return values.reshape(-1, head_dim // 2, 2, *rest).swapaxes(1, 2).reshape(values.shape)


def name_map(arch: GgufArchitecture) -> gguf.TensorNameMap:
    """The `gguf` package's Hugging Face -> llama.cpp name map for this architecture and layer count."""
    return gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.name.upper()], len(arch.layers))


def gguf_name(names: gguf.TensorNameMap, hf_name: str) -> str:
    """llama.cpp's name of one Hugging Face parameter; ConfigError when llama.cpp has no place for it."""
    mapped = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise ConfigError(f"The parameter '{hf_name}' has no place in llama.cpp's llama block; this model is not a "
                          "plain llama-family model, so it cannot be exported to GGUF.")
    return mapped


def _rope_kind(hf_name: str) -> bool:
    return hf_name.endswith(("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias"))


def tensor_layout(loaded: LoadedModel, arch: GgufArchitecture) -> Iterator[tuple[str, str, torch.nn.Parameter, str]]:
    """(llama.cpp name, Hugging Face name, parameter, role) of every tensor once: a tied output layer is skipped
    (llama.cpp reuses the embedding); role is "embedding", "output" or "other"."""
    names = name_map(arch)
    embedding = loaded.model.get_input_embeddings().weight
    seen: set[int] = set()
    for hf_name, parameter in loaded.model.named_parameters(remove_duplicate=False):
        if parameter.data_ptr() in seen:
            continue  # a tied weight appears twice
        seen.add(parameter.data_ptr())
        name = gguf_name(names, hf_name)
        role = ("embedding" if parameter.data_ptr() == embedding.data_ptr()
                else "output" if name.startswith("output.") and parameter.ndim == 2 else "other")
        yield name, hf_name, parameter, role


def model_tensors(loaded: LoadedModel, arch: GgufArchitecture) -> Iterator[NamedTensor]:
    """`tensor_layout`'s tensors as fp32 numpy arrays in llama.cpp's naming and row order."""
    for name, hf_name, parameter, role in tensor_layout(loaded, arch):
        values = parameter.detach().to(torch.float32).cpu().numpy()
        if _rope_kind(hf_name):
            values = to_llama_cpp_rope(values, arch.head_dim)
        yield NamedTensor(name, hf_name, np.ascontiguousarray(values), role)

"""Read a GGUF file PruneScope wrote back into the model it came from: the weights llama.cpp runs, as torch sees them.

Used to measure PruneScope's perplexity of *exactly* the weights in the file (rounded to F16, or quantized to
Q8_0/Q4_x and dequantized by the `gguf` package), so that a perplexity computed inside llama.cpp can be compared
with one computed here on the same weights: a gap then means the export changed the model, not the rounding.
`gguf_state_dict` maps every tensor back to its Hugging Face name and row order (`tensors.from_llama_cpp_rope`);
`gguf_weights_applied` swaps them into a model of the same shapes inside a `with` block and restores it after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import torch

from pruning_core.errors import ConfigError
from pruning_core.gguf.architecture import architecture_for
from pruning_core.gguf.tensors import _rope_kind, from_llama_cpp_rope, gguf_name, name_map
from pruning_core.models import LoadedModel


def gguf_state_dict(loaded: LoadedModel, path) -> dict[str, torch.Tensor]:
    """{Hugging Face parameter name: fp32 tensor} of the GGUF file `path`, for the model `loaded` (whose shapes
    the file must have). A tied output layer gets the embedding's values. ConfigError names a tensor that is
    missing or has another shape."""
    arch = architecture_for(loaded)
    names = name_map(arch)
    reader = gguf.GGUFReader(str(Path(path).expanduser()))
    stored = {t.name: t for t in reader.tensors}
    state = {}
    for hf_name, parameter in loaded.model.named_parameters(remove_duplicate=False):
        name = gguf_name(names, hf_name)
        if name not in stored and name.startswith("output.") and arch.tied:
            name = "token_embd.weight"
        tensor = stored.get(name)
        if tensor is None:
            raise ConfigError(f"The GGUF file has no tensor {name} for {hf_name}; it was written for another model.")
        shape = tuple(int(d) for d in reversed(tensor.shape))
        values = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(shape)
        if tuple(values.shape) != tuple(parameter.shape):
            raise ConfigError(f"The GGUF tensor {name} has shape {tuple(values.shape)} but {hf_name} has "
                              f"{tuple(parameter.shape)}; it was written for another model.")
        if _rope_kind(hf_name):
            values = from_llama_cpp_rope(values, arch.head_dim)
        state[hf_name] = torch.from_numpy(np.array(values, dtype=np.float32))  # a writable copy
    return state


@contextlib.contextmanager
def gguf_weights_applied(loaded: LoadedModel, path) -> Iterator[LoadedModel]:
    """Inside the block `loaded` computes with the GGUF file's weights; on exit its own weights are restored
    bit-identically (even on error), so a model held in a cache is never left changed."""
    state = gguf_state_dict(loaded, path)
    parameters = dict(loaded.model.named_parameters(remove_duplicate=False))
    saved = {name: parameters[name].data.clone() for name in state}
    try:
        with torch.no_grad():
            for name, values in state.items():
                parameters[name].data.copy_(values.to(parameters[name].dtype))
        yield loaded
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                parameters[name].data.copy_(original)

"""THE layer walk, shared by every method, statistic and sensitivity probe.

As in the Wanda and SparseGPT reference code, the inputs of the first decoder layer are captured once
(with *all* keyword arguments the layer needs, `position_embeddings` included), then the model is walked
layer by layer with two buffers swapped, so only one layer's activations are alive at a time. Unlike those
codebases there is one walk, not a copy per method, and the catcher stops only on its own exception.

Propagation modes:
- ``pruned``: after a layer is pruned its outputs are recomputed, so the next layer's statistics see the
  pruned model (what both papers do; the default for reported numbers).
- ``dense``: statistics of the unpruned model, computed once and reusable across methods and sparsities.

Compute dtype (`CALIB_DTYPES`): the calibration forwards of the walk run in fp32 or under bf16 autocast (weights
and the hidden states carried between layers stay fp32; matmuls run in bf16, ~3-4x the fp32 rate on CPUs with
AVX512-BF16 or AMX). Statistics are always accumulated in fp32/fp64 from whatever reaches the linears.

Carried hidden states (`carried_dtype`): fp32, except for a model whose weights are stored in bf16 (a source
ending in "@bfloat16"), whose layers take and return bf16 states in their own forward: there they are carried in
bf16, the values the model itself passes on (casting them up to fp32 would add no digit), at half the memory of
the walk's two buffers (0.4 GB instead of 0.8 GB for a 3B model at 64 x 512 calibration, issue 29).

Offload (`devices.placement.LayerOffload`, optional): the model stays on its home device (the CPU) and each
decoder layer visits the compute device (a GPU) only while it is walked: its statistics forward, the handler
(so pruning math runs on the GPU) and its recomputation; then it goes home. The carried hidden states (and the
layer kwargs) live on the compute device for the whole walk, as in the reference implementations: each layer
reads them twice (statistics pass and recomputation) and its outputs are the next layer's inputs, so keeping
them there saves two or three host-device copies of every activation per layer, at the cost of GPU memory for
two buffers of nsamples x seqlen x hidden fp32 values. Without an offload nothing moves (numbers unchanged).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from pruning_core.devices.allocator import release_free_memory
from pruning_core.devices.placement import LayerOffload
from pruning_core.errors import ConfigError
from pruning_core.masks import preserved_module_weights
from pruning_core.models import LoadedModel
from pruning_core.precision import autocast_for, compute_dtype
from pruning_core.progress import ProgressFn, no_progress
from pruning_core.stats import AllInputsSeen, LayerStatistics

PROPAGATIONS = ("pruned", "dense")
#: Compute dtypes of the walk's calibration forwards ("float32" reproduces the reference numbers bit for bit).
CALIB_DTYPES = ("float32", "bfloat16")


def check_calib_dtype(dtype: str) -> str:
    """Return `dtype` if it is a known calibration compute dtype, else raise ConfigError naming the choices."""
    if dtype not in CALIB_DTYPES:
        raise ConfigError(f"Calibration dtype '{dtype}' is unknown; use one of {', '.join(CALIB_DTYPES)}.")
    return dtype


class _LayerInputsCaptured(Exception):
    """Raised by the capture hook to stop the forward pass once layer 0's inputs are known."""


@dataclass
class LayerInputs:
    """Hidden states entering one decoder layer, per batch, and the keyword arguments the layer needs.

    hidden[b]: (batch, seqlen, hidden) fp32 for batch b; kwargs[b]: that batch's layer kwargs
    (attention mask, position ids, position embeddings...), shared by every layer.
    """

    hidden: list[torch.Tensor]
    kwargs: list[dict]

    @property
    def tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)


def carried_dtype(module: nn.Module) -> torch.dtype:
    """The dtype the walk carries hidden states in between `module`'s layers: bf16 when its weights are stored in
    bf16 (the states its layers pass on in their own forward), else fp32."""
    weight = next((p for p in module.parameters() if p.is_floating_point()), None)
    return torch.bfloat16 if weight is not None and weight.dtype == torch.bfloat16 else torch.float32


def batches_of(input_ids: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split (n, seqlen) token windows into batches of at most `batch_size` windows."""
    return [input_ids[i:i + batch_size] for i in range(0, input_ids.shape[0], batch_size)]


@torch.inference_mode()
def capture_layer_inputs(loaded: LoadedModel, input_ids: torch.Tensor, batch_size: int = 8,
                         offload: Optional[LayerOffload] = None) -> LayerInputs:
    """Run the embeddings on `input_ids` (n, seqlen) and capture what enters decoder layer 0.

    offload: the embeddings run where the model lives (a lookup, cheap; the forward stops before layer 0) and
    the captured hidden states and kwargs are then moved to the compute device, where the walk wants them.
    """
    layer0 = loaded.adapter.decoder_layers(loaded.model)[0]
    carried = carried_dtype(layer0)
    hidden, kwargs = [], []

    def catch(module, args, layer_kwargs):  # noqa: ARG001 - torch hook signature
        states = args[0] if args else layer_kwargs.pop("hidden_states")
        hidden.append(states.detach().to(carried))
        kwargs.append({k: v for k, v in layer_kwargs.items() if k != "hidden_states"})
        raise _LayerInputsCaptured

    handle = layer0.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for batch in batches_of(input_ids, batch_size):
            try:
                loaded.model(input_ids=batch, use_cache=False)
            except _LayerInputsCaptured:
                pass
    finally:
        handle.remove()
    if offload is not None:
        return LayerInputs(offload.to_compute(hidden), offload.to_compute(kwargs))
    return LayerInputs(hidden, kwargs)


def run_layer(layer: nn.Module, inputs: LayerInputs, after_batch: Optional[Callable[[], None]] = None,
              dtype: str = "float32") -> list[torch.Tensor]:
    """Forward every batch of `inputs` through one decoder layer; returns the outputs per batch (in
    `carried_dtype(layer)`: fp32, or bf16 for bf16-stored weights).

    dtype: "float32", or "bfloat16" for bf16 autocast (see the module docstring); a layer whose weights are stored in
    bf16 always computes under bf16 autocast (`precision.compute_dtype`). A batch stopped by a
    statistics hook (`stats.AllInputsSeen`) has no output: the list is then empty.
    """
    outputs = []
    dtype = compute_dtype(check_calib_dtype(dtype), layer)
    # bf16-stored weights: feed the layer bf16 states, as the model's own forward does (its norms do not autocast).
    carried = carried_dtype(layer)
    with torch.inference_mode(), autocast_for(dtype):
        for states, layer_kwargs in zip(inputs.hidden, inputs.kwargs):
            try:
                out = layer(states.to(carried), **layer_kwargs)
                outputs.append((out[0] if isinstance(out, (tuple, list)) else out).to(carried))
            except AllInputsSeen:
                pass
            if after_batch is not None:
                after_batch()
    return outputs


# on_layer(index, layer, stats) -> True if it changed the layer's weights
LayerHandler = Callable[[int, nn.Module, LayerStatistics], bool]


def walk_layers(loaded: LoadedModel, inputs: LayerInputs, on_layer: LayerHandler, need: str = "none",
                propagation: str = "pruned", progress: Optional[ProgressFn] = None,
                layer_range: Optional[range] = None, dtype: str = "float32",
                always_changes: bool = False, offload: Optional[LayerOffload] = None,
                restore_each_layer: bool = False) -> LayerInputs:
    """Walk the decoder layers in order, collecting input statistics of each layer's linears.

    For each layer: forward all batches with hooks collecting `need` statistics, call `on_layer`, free the
    statistics, and (in ``pruned`` mode, if the handler changed the weights) recompute the layer's outputs.
    Returns the inputs of the layer after the last one walked (the final hidden states before the norm).
    `on_layer` may change weights in place; restoring them is the caller's job, or the walk's with
    `restore_each_layer`.
    dtype: compute dtype of the layer forwards, "float32" or "bfloat16" (autocast; statistics stay fp32).
    always_changes: the handler changes every layer (pruning), so in ``pruned`` propagation the statistics pass
    only collects statistics and stops before the layer's last linear computes (`LayerStatistics.stop_early`);
    the outputs come from the recomputation after the change, as always. A handler that then reports no change
    costs one more forward of that layer, never a wrong result.
    offload: move each layer to the compute device while it is walked and back home after (see the module
    docstring); the inputs are moved there first (a no-op when `capture_layer_inputs` had the same offload) and
    the returned inputs stay on the compute device.
    restore_each_layer: copy each layer's prunable weights before its step and put them back once its outputs are
    recomputed, so the handler's changes (pruned or quantized weights) shape the next layers' inputs in ``pruned``
    propagation and the model is left as it was, with one layer's copy alive at a time instead of the whole
    model's (what `masks.preserved_weights` around the walk would hold: 1x the decoder weights).
    """
    check_calib_dtype(dtype)
    if propagation not in PROPAGATIONS:
        raise ConfigError(f"Propagation '{propagation}' is unknown; use one of {', '.join(PROPAGATIONS)}.")
    progress = progress or no_progress
    layers = loaded.adapter.decoder_layers(loaded.model)
    indices = layer_range if layer_range is not None else range(len(layers))
    current = inputs
    if offload is not None:
        current = LayerInputs(offload.to_compute(inputs.hidden), offload.to_compute(inputs.kwargs))
    for step, index in enumerate(indices):
        layer = layers[index]
        visit = offload.visiting(f"layer {index}", layer) if offload is not None else contextlib.nullcontext()
        keep = (preserved_module_weights(loaded.adapter.layer_linears(layer).values()) if restore_each_layer
                else contextlib.nullcontext())
        with visit, keep:
            current = _walk_layer(loaded, layer, index, step, current, on_layer, need, propagation, progress,
                                  len(indices), len(layers), dtype, always_changes)
        # The layer's activations are freed and its long-lived results (masks) stay: without handing the holes
        # back, the heap's resident size creeps up by about a layer's transients per layer (devices/allocator.py).
        release_free_memory()
    return current


def _walk_layer(loaded: LoadedModel, layer: nn.Module, index: int, step: int, current: LayerInputs,
                on_layer: LayerHandler, need: str, propagation: str, progress: ProgressFn, steps: int,
                total_layers: int, dtype: str, always_changes: bool) -> LayerInputs:
    """One step of `walk_layers`: statistics forward, handler, recomputation; returns the next layer's inputs."""
    stop_early = always_changes and propagation == "pruned" and need != "none"
    stats = LayerStatistics(loaded.adapter.layer_linears(layer), need, stop_early=stop_early)
    batches_done = [0]

    def after_batch() -> None:
        stats.flush()
        # Report per batch, not only per layer: a progress call is where a job notices a cancel request.
        batches_done[0] += 1
        progress((step + batches_done[0] / len(current.hidden) * 0.5) / steps,
                 f"layer {index + 1}/{total_layers}")

    with stats.hooks():
        outputs = run_layer(layer, current, after_batch=after_batch, dtype=dtype)
    try:
        changed = on_layer(index, layer, stats)
    finally:
        stats.free()
    if (changed and propagation == "pruned") or len(outputs) < len(current.hidden):
        outputs = None  # free the statistics pass's outputs before recomputing: two buffers alive, not three
        outputs = run_layer(layer, current, dtype=dtype)
    progress((step + 1) / steps, f"layer {index + 1}/{total_layers}")
    return LayerInputs(outputs, current.kwargs)

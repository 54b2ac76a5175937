"""Perplexity as the Wanda/SparseGPT papers measure it, and backward transfer.

Token-level perplexity: non-overlapping `seqlen` windows of the evaluation split (the first `eval_windows`),
each token predicted from the window's earlier tokens; ppl = exp(mean token NLL in nats). Units: perplexity is
per token of the model's tokenizer (not lm-eval's word/byte perplexity).

The LM head runs on chunks of a few hundred token rows, so the (rows x vocab) logits stay small.

With a `LayerOffload` (a model larger than GPU memory) the evaluation is layer by layer, as the walk prunes:
the windows' hidden states go through one decoder layer at a time on the compute device, then the final norm
and the LM head run there; the same operations on the same batches as the whole-model forward.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from pruning_core.errors import ConfigError
from pruning_core.devices.placement import LayerOffload, windows_that_fit
from pruning_core.precision import EVAL_DTYPES, autocast_for, compute_dtype  # noqa: F401 - re-exported for callers
from pruning_core.models import LoadedModel
from pruning_core.progress import ProgressFn, no_progress
from pruning_core.walk import batches_of, capture_layer_inputs, walk_layers



@dataclass
class PerplexityResult:
    """ppl: exp(mean NLL); nll: mean token NLL (nats); tokens: predicted tokens; seconds: wall time."""

    ppl: float
    nll: float
    tokens: int
    windows: int
    seconds: float
    dtype: str

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict:
        return asdict(self)


def window_nll(loaded: LoadedModel, input_ids: torch.Tensor) -> torch.Tensor:
    """Sum of token NLLs (nats) per window for a batch (b, seqlen) -> (b,) fp32; predicts tokens 1..T-1."""
    base = loaded.model.base_model
    head = loaded.model.get_output_embeddings()
    hidden = base(input_ids=input_ids, use_cache=False).last_hidden_state  # (b, T, H)
    return nll_from_hidden(hidden, input_ids, head)


def nll_from_hidden(hidden: torch.Tensor, input_ids: torch.Tensor, head: torch.nn.Linear) -> torch.Tensor:
    """Per-window summed NLL (b,) fp32 from final hidden states (b, T, H) (after the final norm).

    head: the output embedding (a Linear: weight (vocab, hidden), optional bias).
    The head runs on chunks of rows across the windows, not on whole windows: a (rows x vocab) logits chunk
    that stays in the CPU caches makes the head and its log-softmax ~1.7x faster than 511-row windows on the
    embedded model (49k vocabulary), and bounds memory to ~25 MB of logits whatever the batch.
    """
    b, t, width = hidden.shape
    states = hidden[:, :-1].reshape(-1, width)
    targets = input_ids[:, 1:].reshape(-1)
    weight, bias = head.weight, head.bias
    rows = _HEAD_CHUNK_ROWS_FP32
    device = states.device.type
    if torch.is_autocast_enabled(device):
        # Cast the (vocab x hidden) weight once, not once per chunk as autocast would (28M values here).
        low = torch.get_autocast_dtype(device)
        weight, bias = weight.to(low), (bias.to(low) if bias is not None else None)
        states, rows = states.to(low), _HEAD_CHUNK_ROWS_BF16
    # The logits of every chunk go to one buffer allocated here (and, under autocast, their fp32 copy to another):
    # a fresh 12-50 MB tensor per chunk is above glibc's mmap threshold, so each chunk page-faulted its logits in
    # anew, which made the head ~1.7x slower than its matmul and softmax (1.35 s against 0.80 s per 8 x 512
    # tokens on the embedded model, 2 cores). Same kernels, same numbers.
    count = states.shape[0]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (states, weight, bias)):
        # A loss to differentiate (adapter training): out= buffers cannot carry autograd, so fresh logits per chunk.
        parts = [F.cross_entropy(F.linear(states[i:i + rows], weight, bias).float(), targets[i:i + rows],
                                 reduction="none") for i in range(0, count, rows)]
        return torch.cat(parts).reshape(b, t - 1).sum(dim=1)
    logits = torch.empty((min(rows, count), weight.shape[0]), dtype=states.dtype, device=states.device)
    as_float = logits if logits.dtype == torch.float32 else torch.empty(logits.shape, dtype=torch.float32,
                                                                         device=states.device)
    parts = []
    for i in range(0, count, rows):
        n = min(rows, count - i)
        torch.mm(states[i:i + n], weight.t(), out=logits[:n])
        if bias is not None:
            logits[:n] += bias
        chunk = logits[:n] if as_float is logits else as_float[:n].copy_(logits[:n])
        parts.append(F.cross_entropy(chunk, targets[i:i + n], reduction="none"))
    return torch.cat(parts).reshape(b, t - 1).sum(dim=1)


# Rows of logits per head chunk, measured on the embedded model (2 cores): 128 rows (12 MB of bf16 logits)
# under bf16 autocast, 256 rows (50 MB) in fp32.
_HEAD_CHUNK_ROWS_BF16 = 128
_HEAD_CHUNK_ROWS_FP32 = 256


def perplexity(loaded: LoadedModel, eval_ids: torch.Tensor, batch_size: int = 4, dtype: str = "float32",
               progress: Optional[ProgressFn] = None, offload: Optional[LayerOffload] = None) -> PerplexityResult:
    """Perplexity of the model as it is now on evaluation windows (n, seqlen). Runs under inference_mode.

    offload: evaluate layer by layer on the offload's compute device, the model staying home (module docstring).
    A model whose weights are stored in bf16 is evaluated under bf16 autocast whatever `dtype` asks (the result's
    `dtype` says so; `precision.compute_dtype`); the NLL is summed in fp64 either way.
    """
    progress = progress or no_progress
    dtype = compute_dtype(dtype, loaded.model)
    if eval_ids.ndim != 2 or eval_ids.shape[0] == 0 or eval_ids.shape[1] < 2:
        raise ConfigError("Perplexity needs at least one evaluation window of 2 or more tokens.")
    start = time.perf_counter()
    total_nll, total_tokens = 0.0, 0
    batches = batches_of(eval_ids, batch_size)
    if offload is not None:
        total_nll = _offloaded_nll(loaded, eval_ids, batch_size, dtype, offload, progress)
        total_tokens = eval_ids.shape[0] * (eval_ids.shape[1] - 1)
    else:
        with torch.inference_mode(), autocast_for(dtype):
            for i, batch in enumerate(batches):
                total_nll += float(window_nll(loaded, batch).double().sum())
                total_tokens += batch.shape[0] * (batch.shape[1] - 1)
                progress((i + 1) / len(batches), f"evaluating {i + 1}/{len(batches)}")
    nll = total_nll / total_tokens
    return PerplexityResult(math.exp(nll), nll, total_tokens, eval_ids.shape[0], time.perf_counter() - start, dtype)


def _offloaded_nll(loaded: LoadedModel, eval_ids: torch.Tensor, batch_size: int, dtype: str,
                   offload: LayerOffload, progress: ProgressFn) -> float:
    """Summed token NLL (nats) of every window, walking one decoder layer at a time on the compute device.

    The windows' hidden states stay on the compute device between layers, two fp32 buffers of (windows, seqlen,
    hidden); windows beyond what fits in half the free GPU memory (or `offload.max_windows`) are evaluated in
    further walks of whole batches, so the batches are those of the whole-model forward either way.
    """
    hidden = int(getattr(loaded.model.config, "hidden_size", 0) or loaded.model.get_input_embeddings().weight.shape[1])
    window_bytes = 2 * eval_ids.shape[1] * hidden * 4
    per_walk = windows_that_fit(offload.compute, window_bytes, eval_ids.shape[0], batch_size)
    if offload.max_windows is not None:
        per_walk = max(batch_size, min(per_walk, offload.max_windows) // batch_size * batch_size)
    norm, head = loaded.adapter.final_norm(loaded.model), loaded.model.get_output_embeddings()
    total = 0.0
    for first in range(0, eval_ids.shape[0], per_walk):
        chunk = eval_ids[first:first + per_walk]
        done, share = first / eval_ids.shape[0], chunk.shape[0] / eval_ids.shape[0]
        inputs = capture_layer_inputs(loaded, chunk, batch_size, offload=offload)
        final = walk_layers(loaded, inputs, lambda index, layer, stats: False, need="none", propagation="dense",
                            progress=lambda fraction, message: progress(done + 0.95 * share * fraction,
                                                                        f"evaluating {message}"),
                            dtype=dtype, offload=offload)
        with offload.visiting("head", norm, head), torch.inference_mode(), autocast_for(dtype):
            for states, batch in zip(final.hidden, batches_of(chunk, batch_size)):
                total += float(nll_from_hidden(norm(states), offload.to_compute(batch, "ids"), head).double().sum())
        del inputs, final  # free the compute device's buffers before the next walk
    progress(1.0, "evaluated")
    return total


def backward_transfer(R: Sequence[Sequence[float]]) -> float:
    """BWT = mean over i < T of (R[T][i] - R[i][i]), in perplexity; positive = forgetting.

    R[t][i]: perplexity on domain i's evaluation split after continual-pruning step t (T x T, 0-based).
    """
    T = len(R)
    if T < 2:
        return 0.0
    return sum(R[T - 1][i] - R[i][i] for i in range(T - 1)) / (T - 1)

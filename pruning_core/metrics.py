"""Perplexity as the Wanda/SparseGPT papers measure it, and backward transfer.

Token-level perplexity: non-overlapping `seqlen` windows of the evaluation split (the first `eval_windows`),
each token predicted from the window's earlier tokens; ppl = exp(mean token NLL in nats). Units: perplexity is
per token of the model's tokenizer (not lm-eval's word/byte perplexity).

The LM head runs on chunks of a few hundred token rows, so the (rows x vocab) logits stay small.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from pruning_core.errors import ConfigError
from pruning_core.precision import EVAL_DTYPES, autocast_for  # noqa: F401 - re-exported for callers
from pruning_core.models import LoadedModel
from pruning_core.progress import ProgressFn, no_progress
from pruning_core.walk import batches_of



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
    parts = [F.cross_entropy(F.linear(states[i:i + rows], weight, bias).float(), targets[i:i + rows],
                             reduction="none")
             for i in range(0, states.shape[0], rows)]
    return torch.cat(parts).reshape(b, t - 1).sum(dim=1)


# Rows of logits per head chunk, measured on the embedded model (2 cores): 128 rows (12 MB of bf16 logits)
# under bf16 autocast, 256 rows (50 MB) in fp32.
_HEAD_CHUNK_ROWS_BF16 = 128
_HEAD_CHUNK_ROWS_FP32 = 256


def perplexity(loaded: LoadedModel, eval_ids: torch.Tensor, batch_size: int = 4, dtype: str = "float32",
               progress: Optional[ProgressFn] = None) -> PerplexityResult:
    """Perplexity of the model as it is now on evaluation windows (n, seqlen). Runs under inference_mode."""
    progress = progress or no_progress
    if eval_ids.ndim != 2 or eval_ids.shape[0] == 0 or eval_ids.shape[1] < 2:
        raise ConfigError("Perplexity needs at least one evaluation window of 2 or more tokens.")
    start = time.perf_counter()
    total_nll, total_tokens = 0.0, 0
    batches = batches_of(eval_ids, batch_size)
    with torch.inference_mode(), autocast_for(dtype):
        for i, batch in enumerate(batches):
            total_nll += float(window_nll(loaded, batch).double().sum())
            total_tokens += batch.shape[0] * (batch.shape[1] - 1)
            progress((i + 1) / len(batches), f"evaluating {i + 1}/{len(batches)}")
    nll = total_nll / total_tokens
    return PerplexityResult(math.exp(nll), nll, total_tokens, eval_ids.shape[0], time.perf_counter() - start, dtype)


def backward_transfer(R: Sequence[Sequence[float]]) -> float:
    """BWT = mean over i < T of (R[T][i] - R[i][i]), in perplexity; positive = forgetting.

    R[t][i]: perplexity on domain i's evaluation split after continual-pruning step t (T x T, 0-based).
    """
    T = len(R)
    if T < 2:
        return 0.0
    return sum(R[T - 1][i] - R[i][i] for i in range(T - 1)) / (T - 1)

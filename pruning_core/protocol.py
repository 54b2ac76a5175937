"""The evaluation protocol shared by every result, as in the Wanda/SparseGPT papers.

Calibration: `nsamples` random windows of `seqlen` tokens from the calibration split, fixed `seed`.
Perplexity: the first `eval_windows` non-overlapping `seqlen` windows of each evaluation split.
Every stored result records this dataclass in full.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from pruning_core import data
from pruning_core.errors import ConfigError
from pruning_core.metrics import EVAL_DTYPES
from pruning_core.models import LoadedModel


@dataclass(frozen=True)
class Protocol:
    """Calibration and evaluation settings.

    nsamples: calibration windows; seqlen: tokens per window; seed: calibration sampling seed;
    eval_windows: evaluation windows per corpus; dtype: evaluation compute dtype ("float32" | "bfloat16");
    batch_size: windows per forward pass in the layer walk (memory vs speed only, not results).
    """

    calib: str = "wiki"
    nsamples: int = 64
    seqlen: int = 512
    seed: int = 0
    eval_windows: int = 64
    dtype: str = "float32"
    batch_size: int = 8
    calib_column: str | None = None

    def validate(self) -> "Protocol":
        for field_name in ("nsamples", "seqlen", "eval_windows", "batch_size"):
            if int(getattr(self, field_name)) < 1:
                raise ConfigError(f"{field_name} must be a positive integer, got {getattr(self, field_name)}.")
        if self.seqlen < 2:
            raise ConfigError("seqlen must be at least 2 tokens.")
        if self.dtype not in EVAL_DTYPES:
            raise ConfigError(f"dtype '{self.dtype}' is unknown; use one of {', '.join(EVAL_DTYPES)}.")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


# Paper protocol (Wanda/SparseGPT): 128 C4 windows of 2048 tokens; here on the chosen calibration corpus.
PAPER_PROTOCOL = Protocol(nsamples=128, seqlen=2048, eval_windows=10_000)
QUICK_PROTOCOL = Protocol(nsamples=16, seqlen=256, eval_windows=16)


def model_context(loaded: LoadedModel) -> int | None:
    """The most positions the model was configured for (`max_position_embeddings`, GPT-2's `n_positions`...),
    or None when its config names none."""
    config = loaded.model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_context(loaded: LoadedModel, seqlen: int) -> None:
    """Refuse windows longer than the model's context in one sentence (past it a model fails with an index error
    or silently computes on positions it never learned)."""
    context = model_context(loaded)
    if context is not None and int(seqlen) > context:
        raise ConfigError(f"seqlen {seqlen} is longer than {loaded.name}'s context of {context} positions; use "
                          f"--seqlen {context} or less.")


def calibration_ids(loaded: LoadedModel, protocol: Protocol) -> torch.Tensor:
    """(nsamples, seqlen) token ids sampled from the calibration split."""
    check_context(loaded, protocol.seqlen)
    text = data.load_corpus_text(protocol.calib, "calibration", protocol.calib_column)
    return data.calibration_windows(loaded.tokenizer, text, protocol.nsamples, protocol.seqlen, protocol.seed)


def evaluation_ids(loaded: LoadedModel, corpus: str, protocol: Protocol, column: str | None = None) -> torch.Tensor:
    """(n <= eval_windows, seqlen) token ids of the evaluation split of `corpus`."""
    check_context(loaded, protocol.seqlen)
    text = data.load_corpus_text(corpus, "evaluation", column)
    return data.evaluation_windows(loaded.tokenizer, text, protocol.seqlen, protocol.eval_windows)


def corpus_key(corpus: str, split: str, column: str | None = None) -> dict:
    """Identity of a corpus split for content hashes (name, split, text sha256)."""
    return data.corpus_identity(corpus, split, column)

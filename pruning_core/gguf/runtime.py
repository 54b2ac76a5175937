"""Run a GGUF file in llama.cpp (through the optional `llama-cpp-python` package): greedy tokens and perplexity.

`llama-cpp-python` compiles llama.cpp when it is installed from source (`pip install '.[llama]'`; about 30 minutes
on two busy cores), so it is an optional extra: `llama_cpp_available` says whether it is there and
`require_llama_cpp` refuses in one sentence when it is not.

Perplexity inside llama.cpp is computed exactly as `metrics.perplexity` computes it in torch: each window of
token ids is evaluated from an empty cache with no token added in front, every position's logits are kept
(`logits_all=True`), and the NLL of tokens 1..T-1 given the earlier ones is summed in float64; ppl = exp(mean NLL).
So the same windows give comparable figures, and a gap beyond the weights' rounding means the export changed the
model.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pruning_core.errors import ConfigError

INSTALL_HINT = ("install the optional llama.cpp runtime with pip install '.[llama]' (it compiles llama.cpp, about 30 "
                "minutes on two cores)")


def llama_cpp_available() -> bool:
    """Whether `llama_cpp` (llama-cpp-python) can be imported here."""
    return importlib.util.find_spec("llama_cpp") is not None


def require_llama_cpp():
    """The `llama_cpp` module, or ConfigError in one sentence saying how to install it."""
    if not llama_cpp_available():
        raise ConfigError(f"llama-cpp-python is not installed, so nothing can run in llama.cpp here; {INSTALL_HINT}.")
    import llama_cpp

    return llama_cpp


def runtime_info() -> dict:
    """{"llama_cpp_python" (version), "system_info" (llama.cpp's CPU feature line: AVX2, FMA...)}."""
    llama_cpp = require_llama_cpp()
    info = llama_cpp.llama_print_system_info()
    return {"llama_cpp_python": getattr(llama_cpp, "__version__", "unknown"),
            "system_info": info.decode(errors="replace").strip() if isinstance(info, bytes) else str(info)}


def default_threads() -> int:
    """The threads llama.cpp computes with when none are given: every core, at most 8."""
    return max(1, min(os.cpu_count() or 1, 8))


def open_gguf(path, n_ctx: int, threads: Optional[int] = None, all_logits: bool = True):
    """A `llama_cpp.Llama` over the GGUF file `path` with room for `n_ctx` tokens and, with `all_logits`, every
    position's logits (perplexity needs them; a speed measurement does not, as a server computes only the last
    position's); ConfigError (one sentence) when llama.cpp cannot load the file."""
    llama_cpp = require_llama_cpp()
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"The GGUF file '{path}' does not exist; export the model first.")
    threads = threads or default_threads()
    try:
        return llama_cpp.Llama(model_path=str(file), n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_ubatch=min(n_ctx, 512),
                               n_threads=threads, n_threads_batch=threads, logits_all=all_logits, verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"llama.cpp could not load '{file.name}' ({exc}); the file is not one llama.cpp runs.") \
            from None


@contextlib.contextmanager
def opened_gguf(path, n_ctx: int, threads: Optional[int] = None, all_logits: bool = True):
    """`open_gguf` for a `with` block: the model is freed when the block ends (here, not at interpreter exit,
    where llama-cpp-python's finaliser fails)."""
    llm = open_gguf(path, n_ctx, threads, all_logits)
    try:
        yield llm
    finally:
        llm.close()


@contextlib.contextmanager
def _given_or_opened(llm, path, n_ctx: int):
    """`llm` when given (the caller closes it), else the file opened for the block."""
    if llm is not None:
        yield llm
        return
    with opened_gguf(path, n_ctx) as opened:
        yield opened


def greedy_tokens(path, prompt: Sequence[int], new_tokens: int, llm=None) -> list[int]:
    """The `new_tokens` ids llama.cpp picks greedily (arg-max of the logits) after the prompt ids; `llm`: an
    already opened `Llama` with room for them (else the file is opened and closed here)."""
    with _given_or_opened(llm, path, len(prompt) + new_tokens + 1) as model:
        return _greedy(model, prompt, new_tokens)


def _greedy(llm, prompt: Sequence[int], new_tokens: int) -> list[int]:
    llm.reset()
    llm.eval(list(int(t) for t in prompt))
    out = []
    for _ in range(new_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out


def _log_softmax_rows(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def llama_cpp_perplexity(path, windows, llm=None, keep_top1: bool = False) -> dict:
    """Perplexity of the GGUF file `path` inside llama.cpp on `windows` (n, seqlen) of token ids (a tensor or an
    array), computed as the module docstring says. Returns {"ppl", "nll" (mean, nats), "tokens", "windows",
    "seconds"}, and with `keep_top1` "top1": (n, seqlen - 1) int array, llama.cpp's arg-max token at every
    predicted position (to compare with another runtime's position by position)."""
    ids = np.asarray(windows.cpu().numpy() if hasattr(windows, "cpu") else windows, dtype=np.int64)
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] < 2:
        raise ConfigError("Perplexity needs at least one evaluation window of 2 or more tokens.")
    start = time.perf_counter()
    total, count, top1 = 0.0, 0, []
    with _given_or_opened(llm, path, int(ids.shape[1])) as model:
        for window in ids:
            model.reset()
            model.eval([int(t) for t in window])
            logits = np.asarray(model.scores[: len(window) - 1])
            logprobs = _log_softmax_rows(logits)
            total -= float(logprobs[np.arange(len(window) - 1), window[1:]].sum())
            count += len(window) - 1
            if keep_top1:
                top1.append(logits.argmax(axis=1))
    nll = total / count
    result = {"ppl": math.exp(nll), "nll": nll, "tokens": count, "windows": int(ids.shape[0]),
              "seconds": time.perf_counter() - start}
    if keep_top1:
        result["top1"] = np.stack(top1)
    return result

"""Measured latency of a dense model and its structurally pruned copy, in one run, on this machine.

A speed-up is a ratio of tokens/s measured in the same process, dense and pruned interleaved (DESIGN
"Speed-up"), never a formula. Phases:
  * prefill: one forward pass over `prefill_tokens` tokens at batch 1 (tokens/s = prefill_tokens / seconds),
    computing the logits of the last position only where the model allows it (`logits_to_keep=1`, what
    `generate` does for its prefill: the next token needs no other logits); `prefill_logits="all"` times the
    full-vocabulary logits of every position instead (a perplexity pass);
  * decode at batch b: greedy decoding of `decode_tokens` new tokens with the KV cache after a short prompt
    (tokens/s = b x decode_tokens / seconds; the prompt's own forward pass is not timed).
Each phase runs in every dtype asked: "float32" on the model as loaded, "bfloat16" on bf16 *copies* of both
models (the cached models are never cast). Every repeat measures dense and pruned back to back, alternating
which goes first, and the figure is each model's fastest repeat; one warm-up pass per model and dtype is not
counted. The fastest, not the median: another process on the cores only ever adds time, so the minimum is the
estimate least moved by it (as `timeit` reports), while a median of 3 shifts whenever two runs are disturbed.
The load average before and after is recorded with the result, so a reader can see how quiet the machine was.

`measure_speed(..., store=store)` keeps the result in the store under a key of both models' fingerprints, the
settings and the machine facts (CPU model, its bf16/AMX flags, threads, torch version, accelerator), so the
same pair on the same machine is measured once; a different machine or thread count measures again.
"""

from __future__ import annotations

import copy
import inspect
import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from pruning_core.errors import ConfigError
from pruning_core.models import LoadedModel
from pruning_core.machine_load import cpu_seconds, others_busy_share  # noqa: F401 - re-exported
from pruning_core.progress import ProgressFn, no_progress

SPEED_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: CPU flags that decide how fast bf16 runs on a CPU (native bf16 dot products, AMX tiles).
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f")
RESULT_KIND = "structured_speed"
PREFILL_LOGITS = ("last", "all")


@dataclass(frozen=True)
class SpeedConfig:
    """What to time. prefill_tokens: tokens of the prefill pass (batch 1); decode_tokens: new tokens per
    decode run; decode_batches: batch sizes of the decode runs; prompt_tokens: prompt length before decoding;
    dtypes: from SPEED_DTYPES; repeats: timed runs per phase and model (the fastest is reported); seed: the
    random token ids' seed; prefill_logits: "last" (the logits generation needs) or "all" (every position's)."""

    prefill_tokens: int = 512
    decode_tokens: int = 32
    decode_batches: tuple[int, ...] = (1, 8)
    prompt_tokens: int = 16
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    repeats: int = 3
    seed: int = 0
    prefill_logits: str = "last"

    def __post_init__(self) -> None:
        object.__setattr__(self, "decode_batches", tuple(int(b) for b in self.decode_batches))
        dtypes = (self.dtypes,) if isinstance(self.dtypes, str) else tuple(self.dtypes)
        object.__setattr__(self, "dtypes", dtypes)

    def validate(self) -> "SpeedConfig":
        for name in ("prefill_tokens", "decode_tokens", "prompt_tokens", "repeats"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"Speed setting {name} must be a positive integer, got {getattr(self, name)}.")
        if not self.decode_batches or min(self.decode_batches) < 1:
            raise ConfigError(f"Decode batch sizes {self.decode_batches} must be positive integers, e.g. 1,8.")
        unknown = [d for d in self.dtypes if d not in SPEED_DTYPES]
        if unknown or not self.dtypes:
            raise ConfigError(f"Speed dtypes {unknown or '(none)'} are unknown; use {', '.join(SPEED_DTYPES)}.")
        if self.prefill_logits not in PREFILL_LOGITS:
            raise ConfigError(f"Prefill logits '{self.prefill_logits}' is unknown; use {' or '.join(PREFILL_LOGITS)}.")
        return self

    def to_dict(self) -> dict:
        out = asdict(self)
        out["decode_batches"], out["dtypes"] = list(self.decode_batches), list(self.dtypes)
        return out

    def phases(self) -> list[tuple[str, str, int]]:
        """[(label, kind, batch)]: the phase labels used as keys everywhere ("prefill at 512 tokens", ...)."""
        out = [(f"prefill at {self.prefill_tokens} tokens", "prefill", 1)]
        out += [(f"decode at batch {b}", "decode", b) for b in self.decode_batches]
        return out


# --------------------------------------------------------------------------------------------- the machine

def _cpu_facts() -> tuple[str, list[str]]:
    """(CPU model name, the BF16_FLAGS it has), from /proc/cpuinfo where there is one."""
    name, flags = None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name is None:
                    name = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:  # not Linux: the model name from platform is all we know
        pass
    return name or platform.processor() or platform.machine(), [f for f in BF16_FLAGS if f in flags]


def machine_facts(device: Optional[torch.device] = None) -> dict:
    """What decides the speed on this machine: {"cpu", "cpu_flags", "threads", "cpu_count", "torch", "device",
    "accelerator"} (accelerator: the GPU's name when `device` is CUDA, else None)."""
    cpu, flags = _cpu_facts()
    device = torch.device(device) if device is not None else torch.device("cpu")
    accelerator = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu": cpu, "cpu_flags": flags, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "device": device.type, "accelerator": accelerator}


def describe_machine(machine: dict) -> str:
    """'Intel Xeon ... (2 threads, avx512_bf16), torch 2.5.1' or the GPU's name."""
    if machine.get("accelerator"):
        return f"{machine['accelerator']}, torch {machine['torch']}"
    flags = ", ".join(f for f in machine.get("cpu_flags", []) if f != "avx512f") or "no bf16/AMX flags"
    threads = f"{machine['threads']} thread{'s' if machine['threads'] != 1 else ''}"
    return f"{machine['cpu']} ({threads}, {flags}), torch {machine['torch']}"


def speed_key(dense: LoadedModel, pruned: LoadedModel, config: SpeedConfig, machine: dict) -> dict:
    """Everything that determines a measurement (hash it with `store.content_hash`)."""
    return {"kind": RESULT_KIND, "dense": dense.fingerprint, "pruned": pruned.fingerprint,
            "settings": config.to_dict(), "machine": machine, "statistic": STATISTIC}


# --------------------------------------------------------------------------------------------- timing

#: How repeats become one figure (part of the stored key: a figure made another way is measured again).
STATISTIC = "fastest of the repeats"


def _load_average() -> Optional[list]:
    """The 1, 5 and 15 minute load averages (runnable processes), or None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


_cpu_seconds = cpu_seconds  # the floor's readings (`machine_load`), under the names this module used


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _last_logits_only(model) -> dict:
    """The forward argument that limits the logits to the last position, where the model has one."""
    parameters = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):  # transformers >= 4.50, and before
        if name in parameters:
            return {name: 1}
    return {}


@torch.inference_mode()
def _prefill_seconds(model, ids: torch.Tensor, logits: str = "last") -> float:
    device = ids.device
    extra = _last_logits_only(model) if logits == "last" else {}
    _sync(device)
    start = time.perf_counter()
    model(input_ids=ids, use_cache=False, **extra)
    _sync(device)
    return time.perf_counter() - start


def _cache_argument(model) -> str:
    """The forward argument carrying the KV cache: "cache" in transformers 5, "past_key_values" before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.inference_mode()
def _decode_seconds(model, prompt: torch.Tensor, new_tokens: int) -> float:
    """Seconds for `new_tokens` greedy steps with the KV cache (a manual loop: no stopping at EOS, so every
    model decodes exactly the same number of tokens)."""
    argument = _cache_argument(model)
    out = model(input_ids=prompt, use_cache=True)
    past, token = _cache_of(out), out.logits[:, -1:].argmax(-1)
    mask = torch.ones(prompt.shape[0], prompt.shape[1] + 1, dtype=torch.long, device=prompt.device)
    _sync(prompt.device)
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=token, attention_mask=mask, use_cache=True, **{argument: past})
        past, token = _cache_of(out), out.logits[:, -1:].argmax(-1)
        mask = torch.cat([mask, mask[:, :1]], dim=1)
    _sync(prompt.device)
    return time.perf_counter() - start


def _max_positions(model) -> Optional[int]:
    config = model.config
    for name in ("max_position_embeddings", "n_positions"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    return None


def measure_speed(dense: LoadedModel, pruned: LoadedModel, config: Optional[SpeedConfig] = None, *,
                  store=None, progress: Optional[ProgressFn] = None) -> dict:
    """Tokens/s of `dense` and `pruned` in each phase and dtype (see the module docstring); neither is changed.

    Returns {"machine": machine_facts(), "machine_text", "settings", "dense", "pruned" (fingerprints),
    "phases": {dtype: {label: {"dense_tokens_per_s", "pruned_tokens_per_s", "speedup", "dense_seconds",
    "pruned_seconds" (every repeat)}}}, "ratios": {dtype: {label: pruned/dense tokens/s}}, "seconds",
    "cached" (True when read from `store`)}.
    """
    config = (config or SpeedConfig()).validate()
    progress = progress or no_progress
    device = next(dense.model.parameters()).device
    machine = machine_facts(device)
    key = None
    if store is not None:
        from pruning_core.store import content_hash

        key = content_hash(speed_key(dense, pruned, config, machine))
        stored = store.get_result(key)
        if stored is not None:
            progress(1.0, "speed read from the store (same models, same machine)")
            return {**stored, "cached": True}
    longest = max(config.prefill_tokens, config.prompt_tokens + config.decode_tokens + 1)
    for loaded in (dense, pruned):
        limit = _max_positions(loaded.model)
        if limit is not None and longest > limit:
            raise ConfigError(f"The speed run needs {longest} positions but {loaded.name} has {limit}; lower the "
                              "prefill or decode tokens.")
    vocab = int(dense.model.get_input_embeddings().weight.shape[0])
    generator = torch.Generator().manual_seed(config.seed)
    prefill_ids = torch.randint(0, vocab, (1, config.prefill_tokens), generator=generator).to(device)
    prompts = {b: torch.randint(0, vocab, (b, config.prompt_tokens), generator=generator).to(device)
               for b in config.decode_batches}
    phases = config.phases()
    start, cpu_before = time.perf_counter(), _cpu_seconds()
    result: dict = {"machine": machine, "machine_text": describe_machine(machine), "settings": config.to_dict(),
                    "dense": dense.fingerprint, "pruned": pruned.fingerprint, "phases": {}, "ratios": {},
                    "statistic": STATISTIC, "load_average": {"start": _load_average()}}
    steps, done = len(config.dtypes) * config.repeats * len(phases), 0
    for dtype in config.dtypes:
        # fp32 times the models as loaded; bf16 times bf16 copies (the cached models are never cast).
        models = {"dense": dense.model, "pruned": pruned.model}
        if SPEED_DTYPES[dtype] != next(dense.model.parameters()).dtype:
            models = {name: copy.deepcopy(model).to(SPEED_DTYPES[dtype]) for name, model in models.items()}
        for model in models.values():  # warm-up: allocations and kernel selection are not counted
            _prefill_seconds(model, prefill_ids[:, :min(8, config.prefill_tokens)])
            _decode_seconds(model, prompts[config.decode_batches[0]], 1)
        times = {label: {"dense": [], "pruned": []} for label, _, _ in phases}
        for repeat in range(config.repeats):
            order = ("dense", "pruned") if repeat % 2 == 0 else ("pruned", "dense")
            for label, kind, batch in phases:
                for name in order:
                    seconds = (_prefill_seconds(models[name], prefill_ids, config.prefill_logits)
                               if kind == "prefill" else
                               _decode_seconds(models[name], prompts[batch], config.decode_tokens))
                    times[label][name].append(seconds)
                done += 1
                progress(done / steps, f"speed {dtype}: {label}, run {repeat + 1}/{config.repeats}")
        del models
        table = {}
        for label, kind, batch in phases:
            tokens = config.prefill_tokens if kind == "prefill" else batch * config.decode_tokens
            rate = {name: tokens / min(times[label][name]) for name in ("dense", "pruned")}
            table[label] = {"dense_tokens_per_s": rate["dense"], "pruned_tokens_per_s": rate["pruned"],
                            "speedup": rate["pruned"] / rate["dense"], "tokens": tokens,
                            "dense_seconds": times[label]["dense"], "pruned_seconds": times[label]["pruned"]}
        result["phases"][dtype] = table
        result["ratios"][dtype] = {label: row["speedup"] for label, row in table.items()}
    result["seconds"] = time.perf_counter() - start
    result["load_average"]["end"] = _load_average()
    result["others_busy_share"] = others_busy_share(cpu_before, _cpu_seconds(), result["seconds"])
    if store is not None:
        store.put_result(key, RESULT_KIND, result)
    progress(1.0, "speed measured")
    return {**result, "cached": False}

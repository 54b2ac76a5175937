"""Speed of a GGUF file measured inside llama.cpp: prefill and batch-1 decode tokens/s, stored, never a formula.

`measure_runtime_speed(path)` opens the file in llama.cpp (through the optional `llama-cpp-python`), runs one
warm-up and then `repeats` timed rounds, each of
- prefill: `prefill_tokens` ids (512) evaluated from an empty cache in one batch;
- decode: `decode_tokens` ids (64) evaluated one at a time at batch 1 after a one-token start.
As llama-bench's pp/tg tests do, the ids are a fixed sequence rather than sampled: a token costs llama.cpp the same
whichever id it is, and sampling (an arg-max over the vocabulary) is not the runtime's speed. Only the last
position's logits are computed (a server's prefill). tokens/s = tokens evaluated (counted from llama.cpp's own
`n_tokens`) / seconds; the figure is the median of the repeats, every repeat kept.

The measurement records the runtime (llama-cpp-python's version and llama.cpp's feature line), the machine (CPU
model, the CPU flags llama.cpp's kernels use, cores, threads), the settings and the machine's load (load averages
before and after, the share of the cores other processes used while it was timed). It is stored under the kind
`SPEED_KIND`, keyed by the file's content hash, the runtime version, the CPU model, the threads and the settings,
so a second request for the same file on the same machine is a lookup.

A measured file can be linked to what it measures (`link_point`: a frontier point of a model), and
`point_speeds` reads those links back, so the frontier, the Summary and the report show the stored measurement.
"""

from __future__ import annotations

import hashlib
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

from pruning_core.errors import ConfigError
from pruning_core.gguf.runtime import default_threads, opened_gguf, require_llama_cpp, runtime_info
from pruning_core.machine_load import cpu_seconds, others_busy_share
from pruning_core.progress import ProgressFn, no_progress

#: The store's result kind of one speed measurement of one file.
SPEED_KIND = "runtime_speed"
#: The store's result kind of a link from a frontier point to the measurement of the file that runs it.
LINK_KIND = "runtime_speed_point"
#: The runtime these measurements come from (a name shown beside every figure).
RUNTIME = "llama.cpp"
#: How repeats become one figure (part of the key: a figure made another way is measured again).
STATISTIC = "median"
#: CPU flags whose presence decides which llama.cpp CPU kernels run (x86 SIMD widths, dot-product extensions).
KERNEL_FLAGS = ("avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                "amx_tile", "amx_int8", "amx_bf16")
#: Said wherever a point has no measurement: never replaced by an estimate.
NOT_MEASURED = "not measured in a runtime"


@dataclass(frozen=True)
class RuntimeSpeedConfig:
    """How a GGUF file is timed.

    prefill_tokens: ids evaluated in one batch from an empty cache (512: a long prompt, as issue 28 asks);
    decode_tokens: ids evaluated one at a time at batch 1 (64); repeats: timed rounds, their median reported;
    warmup: untimed rounds first (page faults of the mapped file, thread start-up); threads: llama.cpp's threads
    (None: `runtime.default_threads`, every core up to 8).
    """

    prefill_tokens: int = 512
    decode_tokens: int = 64
    repeats: int = 3
    warmup: int = 1
    threads: Optional[int] = None

    def resolved(self) -> "RuntimeSpeedConfig":
        """The same settings with the threads filled in (what the key and the record hold)."""
        if self.prefill_tokens < 1 or self.decode_tokens < 1 or self.repeats < 1 or self.warmup < 0:
            raise ConfigError("A runtime speed needs at least 1 prefill token, 1 decode token and 1 repeat.")
        return RuntimeSpeedConfig(self.prefill_tokens, self.decode_tokens, self.repeats, self.warmup,
                                  int(self.threads or default_threads()))

    @property
    def n_ctx(self) -> int:
        """Context llama.cpp is opened with: the prefill, or the decode after its one-token start."""
        return max(self.prefill_tokens, self.decode_tokens + 1)


def file_sha256(path) -> str:
    """SHA-256 of the file's bytes (hex), read in 8 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(8 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def cpu_facts() -> dict:
    """{"cpu" (model name), "cpu_flags" (those of `KERNEL_FLAGS` this CPU has), "cpu_count"} from /proc/cpuinfo
    (the model name from `platform` where there is none)."""
    name, flags = None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name is None:
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"cpu": name or platform.processor() or platform.machine(),
            "cpu_flags": [f for f in KERNEL_FLAGS if f in flags], "cpu_count": os.cpu_count()}


def machine_words(machine: Mapping) -> str:
    """'Intel Xeon ... (2 cores, 2 threads; avx2, fma, avx512f)': the machine a figure was measured on."""
    flags = ", ".join(machine.get("cpu_flags") or []) or "no AVX flags"
    threads = machine.get("threads")
    return f"{machine.get('cpu')} ({machine.get('cpu_count')} cores, {threads} threads; {flags})"


def runtime_words(record: Mapping) -> str:
    """'llama.cpp (llama-cpp-python 0.3.36)'."""
    return f"{record.get('runtime', RUNTIME)} (llama-cpp-python {record.get('runtime_version')})"


def speed_key(file_hash: str, config: RuntimeSpeedConfig, version: str, cpu: str) -> dict:
    """Everything that decides a measurement (hash it with `store.content_hash`): the file's content, the runtime
    and its version, the CPU model, the threads and the rest of the settings."""
    return {"kind": SPEED_KIND, "file": file_hash, "runtime": RUNTIME, "version": version, "cpu": cpu,
            "threads": config.threads, "settings": asdict(config), "statistic": STATISTIC}


def _load_average() -> Optional[list]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def fixed_ids(count: int, vocab: int, offset: int = 0) -> list[int]:
    """`count` token ids spread over the vocabulary by a fixed stride (the same ids on every run and machine)."""
    span = max(1, vocab - 3)
    return [3 + (offset + 7919 * i) % span for i in range(count)]


def time_rounds(llm, config: RuntimeSpeedConfig, clock: Callable[[], float] = time.perf_counter,
                progress: ProgressFn = no_progress) -> dict:
    """Warm-up and timed rounds on an opened `Llama` (module docstring). Returns {"prefill": [{"tokens",
    "seconds"}] per timed round, "decode": [...]}; tokens are counted from llama.cpp's `n_tokens`."""
    vocab = int(llm.n_vocab())
    prompt = fixed_ids(config.prefill_tokens, vocab)
    start, steps = fixed_ids(1, vocab, offset=11), fixed_ids(config.decode_tokens, vocab, offset=23)
    rounds = config.warmup + config.repeats
    timed: dict[str, list] = {"prefill": [], "decode": []}
    for index in range(rounds):
        llm.reset()
        began = clock()
        llm.eval(prompt)
        prefill = {"tokens": int(llm.n_tokens), "seconds": clock() - began}
        llm.reset()
        llm.eval(start)
        before = int(llm.n_tokens)
        began = clock()
        for token in steps:
            llm.eval([token])
        decode = {"tokens": int(llm.n_tokens) - before, "seconds": clock() - began}
        if index >= config.warmup:
            timed["prefill"].append(prefill)
            timed["decode"].append(decode)
        progress((index + 1) / rounds, f"{'warm-up' if index < config.warmup else 'timed'} round {index + 1} of "
                                       f"{rounds}")
    return timed


def _median_rate(rounds: list[dict]) -> float:
    return float(statistics.median(r["tokens"] / r["seconds"] for r in rounds))


def measure_runtime_speed(path, config: Optional[RuntimeSpeedConfig] = None, store=None,
                          clock: Callable[[], float] = time.perf_counter, progress: Optional[ProgressFn] = None,
                          llm=None) -> dict:
    """Prefill and batch-1 decode tokens/s of the GGUF file `path` in llama.cpp (module docstring).

    store: where a measurement of the same file, runtime version, CPU and settings is read from (then "from_store"
    is True and nothing runs) and a new one is kept; clock: seconds (injected by tests); llm: an already opened
    `Llama` over the file (tests); ConfigError in one sentence where llama-cpp-python is not installed.
    Returns {"runtime", "runtime_version", "system_info", "machine" (`cpu_facts` + threads), "machine_words",
    "settings" (with "n_ctx"), "statistic", "file" {"name", "sha256", "bytes"}, "prefill_tokens_per_s",
    "decode_tokens_per_s", "rounds" (every timed round), "load" {"before", "after", "others_busy_share"},
    "seconds" (the whole measurement), "created", "key", "from_store"}."""
    require_llama_cpp()
    progress = progress or no_progress
    config = (config or RuntimeSpeedConfig()).resolved()
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"The GGUF file '{path}' does not exist; export the model first.")
    info = runtime_info()
    machine = {**cpu_facts(), "threads": config.threads}
    file_hash = file_sha256(file)
    from pruning_core.store import content_hash

    key = content_hash(speed_key(file_hash, config, info["llama_cpp_python"], machine["cpu"]))
    found = store.get_result(key) if store is not None else None
    if found is not None:
        return {**found, "from_store": True}
    began, load_before, busy_before = time.perf_counter(), _load_average(), cpu_seconds()
    if llm is not None:
        rounds = time_rounds(llm, config, clock, progress)
    else:
        with opened_gguf(file, config.n_ctx, config.threads, all_logits=False) as opened:
            rounds = time_rounds(opened, config, clock, progress)
    seconds = time.perf_counter() - began
    record = {"runtime": RUNTIME, "runtime_version": info["llama_cpp_python"], "system_info": info["system_info"],
              "machine": machine, "machine_words": machine_words(machine),
              "settings": {**asdict(config), "n_ctx": config.n_ctx}, "statistic": STATISTIC,
              "file": {"name": file.name, "sha256": file_hash, "bytes": file.stat().st_size},
              "prefill_tokens_per_s": _median_rate(rounds["prefill"]),
              "decode_tokens_per_s": _median_rate(rounds["decode"]), "rounds": rounds,
              "load": {"before": load_before, "after": _load_average(),
                       "others_busy_share": others_busy_share(busy_before, cpu_seconds(), seconds)},
              "seconds": seconds, "created": time.time(), "key": key}
    if store is not None:
        store.put_result(key, SPEED_KIND, record)
    return {**record, "from_store": False}


# --------------------------------------------------------------------------------------------- links to points

def link_point(store, model: str, point: str, measurement: Mapping, measured_on: str,
               own_file: bool = False) -> None:
    """Remember that the frontier point `point` of the model with fingerprint `model` runs as the file
    `measurement` measured (`measure_runtime_speed`'s record); measured_on: one sentence saying which file that
    is ("the dense model written as Q4_0: the tensor types and shapes of this point's layout"); own_file: True when
    that file is the point's own model (its exact GGUF export, or its own model as F16), False for a stand-in of
    the same layout (a later run then times the point's own file when it can make it)."""
    from pruning_core.store import content_hash

    machine = measurement["machine"]
    key = content_hash({"kind": LINK_KIND, "model": model, "point": point, "runtime": RUNTIME,
                        "cpu": machine["cpu"], "threads": machine["threads"]})
    store.put_result(key, LINK_KIND, {"model": model, "point": point, "speed_key": measurement["key"],
                                      "measured_on": measured_on, "own_file": bool(own_file),
                                      "created": time.time()})


def speed_fields(record: Mapping, measured_on: Optional[str] = None, own_file: bool = False) -> dict:
    """The fields a frontier point carries of a measurement: {"runtime", "runtime_version", "runtime_words",
    "machine", "machine_words", "prefill_tokens_per_s", "decode_tokens_per_s", "prefill_tokens", "decode_tokens",
    "threads", "file_bytes", "measured_on", "own_file" (the point's own file was timed, not a stand-in of its
    layout), "load", "key"}."""
    settings = record.get("settings") or {}
    return {"runtime": record.get("runtime", RUNTIME), "runtime_version": record.get("runtime_version"),
            "runtime_words": runtime_words(record), "machine": (record.get("machine") or {}).get("cpu"),
            "machine_words": record.get("machine_words"),
            "prefill_tokens_per_s": float(record["prefill_tokens_per_s"]),
            "decode_tokens_per_s": float(record["decode_tokens_per_s"]),
            "prefill_tokens": settings.get("prefill_tokens"), "decode_tokens": settings.get("decode_tokens"),
            "threads": settings.get("threads"), "file_bytes": (record.get("file") or {}).get("bytes"),
            "measured_on": measured_on, "own_file": bool(own_file), "load": record.get("load"),
            "key": record.get("key")}


def point_speeds(store, model: Optional[str]) -> dict[str, dict]:
    """{frontier point key: `speed_fields`} of the points of the model with fingerprint `model` that were linked
    to a stored measurement; of several, the newest link, this machine's CPU first. Empty without a store or a
    fingerprint."""
    if store is None or not model:
        return {}
    here = cpu_facts()["cpu"]
    links = [link for link in store.results_of_kind(LINK_KIND) if link.get("model") == model]
    found: dict[str, tuple] = {}
    for order, link in enumerate(links):  # oldest first: a newer link replaces an older one of the same rank
        record = store.get_result(link["speed_key"])
        if record is None:
            continue
        rank = (((record.get("machine") or {}).get("cpu") == here), order)
        if link["point"] not in found or rank > found[link["point"]][0]:
            found[link["point"]] = (rank, speed_fields(record, link.get("measured_on"), link.get("own_file", False)))
    return {point: fields for point, (_, fields) in found.items()}
